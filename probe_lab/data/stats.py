"""Per-feature mean and population standard deviation, in one pass: over a dataset block by block
(`feature_moments`), or over a resident tensor where it lives (`device_moments`).

Both reduce each block in one pass (`torch.var_mean`, so a large mean does not cancel) and combine
the blocks in float64 with Chan's formula; they are the one implementation of feature statistics in
probe_lab (the preconditioner, standardization, the sklearn backend's centring).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from probe_lab.data.dataset import ActivationDataset

# Working copies: 512 MB of rows on a GPU, 32 MB on the CPU (memory stays flat on the host).
_GPU_BLOCK_BYTES = 512 << 20
_CPU_BLOCK_BYTES = 32 << 20


def feature_moments(dataset: ActivationDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of each feature of `dataset` as float64 tensors (D,) where the rows live, reading
    the rows once in blocks whose working copies are 32 MB of float64 on the host (512 MB of float32
    on a GPU)."""
    work = torch.float32 if dataset.device.type == "cuda" else torch.float64
    step = max(1, _block_bytes(dataset.device) // (work.itemsize * dataset.dim))
    blocks = (dataset.read(np.arange(start, min(start + step, len(dataset)))) for start in range(0, len(dataset), step))
    return _combined(blocks, dataset.dim, dataset.device, work)


def block_moments(blocks: Iterable[torch.Tensor], dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of each feature of the rows of `blocks` ((k, D) tensors on `device`), float64, in
    one pass (float32 working copies on a GPU, float64 on the CPU)."""
    return _combined(blocks, dim, device, torch.float32 if device.type == "cuda" else torch.float64)


def evenly_spaced_rows(n_rows: int, count: int) -> torch.Tensor:
    """`count` evenly spaced row indices of `n_rows` (all of them when count >= n_rows), int64 on the
    host: the one rule every estimate from sampled rows follows, so that the shards of a data-parallel
    fit sample exactly the rows a single process would."""
    if count >= n_rows:
        return torch.arange(n_rows)
    return torch.linspace(0, n_rows - 1, count, dtype=torch.float64).round().long().unique()


def combine_moments(counts: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the union of parts with these row counts (P,), means and stds (P, D), combined
    in float64 with Chan's formula in the parts' order (the same answer on every process that has them
    all)."""
    moments = _Moments(means.shape[1], means.device)
    for k, part_mean, part_std in zip(counts.long().tolist(), means.double(), stds.double(), strict=True):
        moments.add(k, part_mean, part_std**2)
    return moments.mean_std()


def device_moments(
    x: torch.Tensor,
    block_rows: int | None = None,
    sample_rows: int | None = None,
    work_dtype: torch.dtype | None = None,
    *,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of each column of a resident (N, D) tensor, computed where it lives, as float64
    tensors beside it. Nothing is read back to the host, so on a GPU this only queues the work.

    block_rows: rows per working copy (by default 512 MB of them on a GPU, 32 MB on the CPU).
    sample_rows: estimate from this many evenly spaced rows (`evenly_spaced_rows`) instead of all of
    them (for uses that only need the scale of each feature, such as a preconditioner).
    rows: estimate from these rows (host int64 indices) instead.
    work_dtype: the working copies' dtype (by default float32 on a GPU, float64 on the CPU); float32
    blocks are combined in float64 (benchmarks/moments.py compares the two).
    """
    if rows is None and sample_rows is not None and len(x) > sample_rows:
        rows = evenly_spaced_rows(len(x), sample_rows)
    if rows is not None:
        # Pinned, so the copy of the indices queues behind the GPU's work instead of waiting for it.
        indices = rows.pin_memory() if x.is_cuda else rows
        x = x.index_select(0, indices.to(x.device, non_blocking=True))
    work = work_dtype or (torch.float32 if x.is_cuda else torch.float64)
    block_rows = block_rows or max(1, _block_bytes(x.device) // (work.itemsize * x.shape[1]))
    return _combined(x.split(block_rows), x.shape[1], x.device, work)


def column_moments(x: torch.Tensor, column_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) (K, D), float64, of the rows of a resident (N, D) tensor that each of the K columns
    of `column_rows` (N, K) bool marks, in one pass over x (columns marking the same rows, as the
    values of one fold do, are computed once)."""
    groups, column_group = torch.unique(column_rows, dim=1, return_inverse=True)
    parts = [_Moments(x.shape[1], x.device) for _ in range(groups.shape[1])]
    work = torch.float32 if x.is_cuda else torch.float64
    block_rows = max(1, _block_bytes(x.device) // (work.itemsize * x.shape[1]))
    for start in range(0, len(x), block_rows):
        block = x[start : start + block_rows].to(work)
        marks = groups[start : start + block_rows]
        for number, moments in enumerate(parts):
            rows = block[marks[:, number]]
            if len(rows):
                var, mean = torch.var_mean(rows, dim=0, correction=0)
                moments.add(len(rows), mean, var)
    means = torch.stack([moments.mean_std()[0] for moments in parts])
    stds = torch.stack([moments.mean_std()[1] for moments in parts])
    return means[column_group], stds[column_group]


def _block_bytes(device: torch.device) -> int:
    return _GPU_BLOCK_BYTES if device.type == "cuda" else _CPU_BLOCK_BYTES


class _Moments:
    """Running (count, mean, sum of squared deviations) in float64, parts added by Chan's formula."""

    def __init__(self, dim: int, device: torch.device) -> None:
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros_like(self.mean)

    def add(self, k: int, mean: torch.Tensor, var: torch.Tensor) -> None:
        """A part of `k` rows with this mean and population variance."""
        if k == 0:
            return
        delta = mean.double() - self.mean
        total = self.count + k
        self.mean += delta * (k / total)
        self.m2 += var.double() * k + delta**2 * (self.count * k / total)
        self.count = total

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, (self.m2 / max(self.count, 1)).sqrt()


def _combined(
    blocks: Iterable[torch.Tensor], dim: int, device: torch.device, work: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chan's combination of each block's (mean, sum of squared deviations), in float64."""
    moments = _Moments(dim, device)
    for block in blocks:
        if len(block):
            block_var, block_mean = torch.var_mean(block.to(work), dim=0, correction=0)
            moments.add(len(block), block_mean, block_var)
    return moments.mean_std()
