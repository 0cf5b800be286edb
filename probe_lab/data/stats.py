"""Per-feature mean and standard deviation in one streaming float64 pass."""

from __future__ import annotations

import numpy as np

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
