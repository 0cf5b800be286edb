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


# On a GPU, columns whose squared mean exceeds this multiple of their variance get their moments
# recomputed in float64: there Σx²/n − mean², from float32 sums (rounded to about 1e-7 of Σx²),
# would lose more than a few 1e-6 of the variance.
CANCELLATION_RATIO = 16.0
SUM_BLOCK_ROWS = 65536  # rows per float32 partial sum on a GPU; the partial sums are added in float64


def tensor_moments(x: torch.Tensor, block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, population std) of each column of a resident (N, D) tensor, computed where it lives
    (on the GPU for data held there), as float64 arrays.

    On a GPU: two tree reductions that read the stored values once each and accumulate in float32
    (Σx, and Σx² as a squared `vector_norm`), per block of rows, added in float64 — about two reads
    of the data, where a float64 working copy (written and read again) took several times longer
    (benchmarks/moments.py). Columns where Σx²/n − mean² cancels too much to trust float32 sums
    (mean² > CANCELLATION_RATIO · variance) are recomputed in float64. On the CPU, whose float32
    norm accumulates row after row, every column is computed in float64.
    """
    if not x.is_cuda:
        mean, var = _exact_moments(x, block_rows=block_rows)
        return mean.numpy(), var.sqrt().numpy()
    n = max(len(x), 1)
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    for block in x.split(block_rows or SUM_BLOCK_ROWS):
        total += block.sum(0, dtype=torch.float32)
        squares += torch.linalg.vector_norm(block, dim=0, dtype=torch.float32).double().square()
    mean = total / n
    var = (squares / n - mean.square()).clamp_min(0)
    cancelling = (mean.square() > CANCELLATION_RATIO * var).nonzero().squeeze(1)
    if len(cancelling):
        mean[cancelling], var[cancelling] = _exact_moments(x, cancelling)
    return mean.cpu().numpy(), var.sqrt().cpu().numpy()


def _exact_moments(
    x: torch.Tensor, columns: torch.Tensor | None = None, block_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, population variance) of x's columns (all, or the given ones) in float64, one block of
    rows at a time, combined with Chan's formula as `feature_moments` does."""
    width = x.shape[1] if columns is None else len(columns)
    # float64 working copies of 256 MB on a GPU, 32 MB on the CPU (memory stays flat there).
    block_rows = block_rows or max(1, (256 << 20 if x.is_cuda else 32 << 20) // (8 * width))
    count = 0
    mean = torch.zeros(width, dtype=torch.float64, device=x.device)
    m2 = torch.zeros_like(mean)
    for block in x.split(block_rows):
        k = len(block)
        values = block if columns is None else block[:, columns]
        block_var, block_mean = torch.var_mean(values.double(), dim=0, correction=0)
        delta = block_mean - mean
        total = count + k
        mean += delta * (k / total)
        m2 += block_var * k + delta**2 * (count * k / total)
        count = total
    return mean, m2 / max(count, 1)
