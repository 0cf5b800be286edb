"""Built-in data sets, generated in-process (nothing to download).

`activation_like`: features shaped like a language model's residual stream — an anisotropic
spectrum, a few outlier dimensions tens of times larger than the rest, a mean far from zero — with
labels drawn from a planted direction through a logistic link, so even the best probe has AUROC < 1.

`seed_task`: the seed guide's GPU-test data: class 1 has first feature |z| + 3, class 0 has
-|z| - 3, every other feature N(0, 1). Linearly separable along the first feature.
"""

from __future__ import annotations

import numpy as np
import torch

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
    mean, scales, direction = activation_geometry(rng, dim, n_outliers, outlier_scale)
    x = np.empty((n, dim), dtype=dtype)
    y = np.empty(n, dtype=np.int64)
    for start in range(0, n, _BLOCK):
        rows = min(_BLOCK, n - start)
        z = rng.standard_normal((rows, dim))
        x[start : start + rows] = mean + z * scales
        p = 1.0 / (1.0 + np.exp(-signal * (z @ direction)))
        y[start : start + rows] = rng.random(rows) < p
    return x, y


def activation_like_tensor(
    n: int,
    dim: int,
    seed: int,
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float16,
    n_outliers: int = 4,
    outlier_scale: float = 30.0,
    signal: float = 3.0,
) -> tuple[torch.Tensor, np.ndarray]:
    """`activation_like`'s distribution (the same mean, spectrum, outliers and direction for a seed),
    drawn by torch on `device`: (X (n, dim) of `dtype` on the device, y (n,) int64 on the host).
    Benchmarks at 70B scale use it, where drawing billions of values on the CPU takes minutes."""
    mean, scales, direction = activation_geometry(np.random.default_rng(seed), dim, n_outliers, outlier_scale)
    mean_t, scales_t, direction_t = (
        torch.tensor(v, dtype=torch.float32, device=device) for v in (mean, scales, direction)
    )
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.empty((n, dim), dtype=dtype, device=device)
    y = torch.empty(n, dtype=torch.int64, device=device)
    for start in range(0, n, _BLOCK):
        rows = min(_BLOCK, n - start)
        z = torch.randn((rows, dim), generator=generator, device=device)
        x[start : start + rows] = torch.addcmul(mean_t, z, scales_t)
        p = torch.sigmoid(signal * (z @ direction_t))
        y[start : start + rows] = torch.rand(rows, generator=generator, device=device) < p
    return x, y.cpu().numpy()


def activation_geometry(
    rng: np.random.Generator, dim: int, n_outliers: int, outlier_scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, per-dimension scale, planted unit direction) of activation-like data."""
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
    return mean, scales, direction


def seed_task(per_class: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed guide's synthetic task: (X (2·per_class, dim) float32, y), classes interleaved at random."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * per_class, dim)).astype(np.float32)
    y = np.repeat(np.array([1, 0]), per_class)
    first = np.abs(rng.standard_normal(2 * per_class)) + 3.0
    x[:, 0] = np.where(y == 1, first, -first)
    order = rng.permutation(2 * per_class)
    return x[order], y[order]
