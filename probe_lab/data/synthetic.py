"""Built-in data sets, generated in-process (nothing to download).

`activation_like`: features shaped like a language model's residual stream — an anisotropic
spectrum, a few outlier dimensions tens of times larger than the rest, a mean far from zero — with
labels drawn from a planted direction through a logistic link, so even the best probe has AUROC < 1.

`seed_task`: the seed guide's GPU-test data: class 1 has first feature |z| + 3, class 0 has
-|z| - 3, every other feature N(0, 1). Linearly separable along the first feature.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 16384


def activation_like(
    n: int,
    dim: int,
    seed: int,
    *,
    n_outliers: int = 4,
    outlier_scale: float = 30.0,
    signal: float = 3.0,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, dim), y (n,) of 0/1). Generated block by block, so n×dim need only fit once, in `dtype`."""
    rng = np.random.default_rng(seed)
    spectrum = (1.0 + np.arange(dim)) ** -0.5 * rng.uniform(0.5, 1.5, dim)
    outliers = rng.choice(dim, size=min(n_outliers, dim - 1), replace=False)
    scales = spectrum.copy()
    scales[outliers] *= outlier_scale
    mean = rng.normal(0.0, 1.0, dim) * scales + rng.normal(0.0, 0.5, dim)
    # The concept lives mostly in the high-variance directions, none of it in the outlier dimensions
    # (as in real residual streams, where the outliers carry little task information).
    direction = rng.standard_normal(dim) * spectrum
    direction[outliers] = 0.0
    direction /= np.linalg.norm(direction)

    x = np.empty((n, dim), dtype=dtype)
    y = np.empty(n, dtype=np.int64)
    for start in range(0, n, _BLOCK):
        rows = min(_BLOCK, n - start)
        z = rng.standard_normal((rows, dim))
        x[start : start + rows] = mean + z * scales
        p = 1.0 / (1.0 + np.exp(-signal * (z @ direction)))
        y[start : start + rows] = rng.random(rows) < p
    return x, y


def seed_task(per_class: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed guide's synthetic task: (X (2·per_class, dim) float32, y), classes interleaved at random."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * per_class, dim)).astype(np.float32)
    y = np.repeat(np.array([1, 0]), per_class)
    first = np.abs(rng.standard_normal(2 * per_class)) + 3.0
    x[:, 0] = np.where(y == 1, first, -first)
    order = rng.permutation(2 * per_class)
    return x[order], y[order]
