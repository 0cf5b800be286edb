"""Per-feature mean and standard deviation: one streaming pass over a dataset, or over a resident tensor."""

from __future__ import annotations

import numpy as np
import torch

from probe_lab.data.dataset import ActivationDataset


def feature_moments(dataset: ActivationDataset) -> tuple[np.ndarray, np.ndarray]:
    """(mean, population std) of each feature, float64, combining blocks with Chan's formula.

    Combining per-block means and squared deviations avoids the cancellation of Σx² − (Σx)²/n when
    a feature's mean is large compared with its spread, as it is for outlier dimensions.
    """
    count = 0
    mean = np.zeros(dataset.dim)
    m2 = np.zeros(dataset.dim)
    # float64 working copies: half the rows of a float32 block keep them the same size.
    for block in dataset.blocks(max(1, dataset.block_rows // 2)):
        block = block.astype(np.float64)
        k = len(block)
        block_mean = block.mean(axis=0)
        block_m2 = ((block - block_mean) ** 2).sum(axis=0)
        delta = block_mean - mean
        total = count + k
        mean += delta * (k / total)
        m2 += block_m2 + delta**2 * (count * k / total)
        count = total
    return mean, np.sqrt(m2 / max(count, 1))


def tensor_moments(
    x: torch.Tensor,
    block_rows: int | None = None,
    sample_rows: int | None = None,
    work_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`device_moments` as float64 arrays on the host."""
    mean, std = device_moments(x, block_rows, sample_rows, work_dtype)
    return mean.cpu().numpy(), std.cpu().numpy()


def device_moments(
    x: torch.Tensor,
    block_rows: int | None = None,
    sample_rows: int | None = None,
    work_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, population std) of each column of a resident (N, D) tensor, computed where it lives
    (on the GPU for data held there), as float64 tensors beside it. Nothing is read back to the
    host, so on a GPU this only queues the work.

    block_rows: rows per working copy (by default 512 MB of them on a GPU, 32 MB on the CPU).
    sample_rows: estimate from this many evenly spaced rows instead of all of them (for uses that
    only need the scale of each feature, such as a preconditioner).
    work_dtype: the working copies' dtype (by default float32 on a GPU, float64 on the CPU).

    Each block of rows is up-cast and reduced in one pass (`torch.var_mean`, Welford's update, so a
    large mean does not cancel), and the blocks are combined in float64 with Chan's formula, as
    `feature_moments` does. Working copies are float32 on a GPU: float64 ones, four times the bytes
    of float16 data, took 2.3 times longer there, and the float32 blocks' std matched float64's to
    2e-7 on activation-like data (benchmarks/moments.py). On the CPU they are float64 blocks of
    32 MB, so memory stays flat.
    """
    if sample_rows is not None and len(x) > sample_rows:
        spaced = torch.linspace(0, len(x) - 1, sample_rows, dtype=torch.float64, device=x.device)
        x = x.index_select(0, spaced.round().long())
    work = work_dtype or (torch.float32 if x.is_cuda else torch.float64)
    block_rows = block_rows or max(1, (512 << 20 if x.is_cuda else 32 << 20) // (work.itemsize * x.shape[1]))
    count = 0
    mean = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    m2 = torch.zeros_like(mean)
    for block in x.split(block_rows):
        k = len(block)
        block_var, block_mean = torch.var_mean(block.to(work), dim=0, correction=0)
        delta = block_mean.double() - mean
        total = count + k
        mean += delta * (k / total)
        m2 += block_var.double() * k + delta**2 * (count * k / total)
        count = total
    return mean, (m2 / max(count, 1)).sqrt()
