"""Closed-form probes from class statistics: the mass-mean direction μ₁ − μ₀ and shrunk LDA Σ⁻¹(μ₁ − μ₀).

`class_mean_probe` reads the training rows once, block by block where they live, accumulating per
class in float64 the count, Σy and (for LDA) Σyyᵀ of the rows shifted by a per-class reference
y = x − s (the class mean of the first block holding that class, so that large feature means do not
cancel). Ledoit-Wolf shrinkage also needs the centred fourth moments Σᵢ zᵢ²zⱼ² (z = y − ȳ); to keep
one pass, Σ(y²)yᵀ and Σ(y²)(y²)ᵀ are accumulated as well and the centred sum is expanded from them.

Σ is the within-class covariance of sklearn's `LinearDiscriminantAnalysis(solver="lsqr",
shrinkage=...)`: Σ_c (n_c / N)·Σ_c, each class's covariance Σ_c shrunk as its `_cov` does, so the
direction is sklearn's binary `coef_`. A 1-D logistic regression of the labels on the training
scores d·x then sets the probe's scale and bias (a second streamed pass).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
import torch

from probe_lab.data.dataset import ActivationDataset
from probe_lab.errors import ProbeLabError
from probe_lab.probe import DEVICE_BLOCK_FACTOR, ProbeWeights, decision_functions
from probe_lab.settings.probe import AUTO, ProbeKind

__all__ = ["ClassMoments", "accumulate_class_moments", "calibrate_scores", "class_mean_probe", "ledoit_wolf_covariance"]

# The calibration's L2 penalty on the slope of standardized scores (per row, as in a mean loss): too
# small to move the fit on data with overlapping classes, enough to keep it finite on separable data.
CALIBRATION_PENALTY = 1e-4
_FLOAT64_EPS = float(np.finfo(np.float64).eps)


def class_mean_probe(
    train: ActivationDataset,
    kind: ProbeKind,
    *,
    shrinkage: float | str = AUTO,
) -> tuple[ProbeWeights, dict[str, Any]]:
    """A probe whose direction comes from class statistics of `train`, calibrated on `train`.

    kind: `mean_difference` gives d = μ₁ − μ₀ of the raw features; `lda` gives d = Σ⁻¹(μ₁ − μ₀),
    Σ as sklearn's `LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage)` builds it
    (`shrinkage`: "auto" for Ledoit-Wolf on each class's standardized rows, or a number in [0, 1];
    mean_difference ignores it).
    `logistic` (or any other kind) raises ValueError.

    The rows are read once for the statistics and once to score them. The probe is w = a·d (float32),
    bias b, where (a, b) is a logistic regression of the labels on the scores d·x with a tiny penalty
    on the slope of the standardized scores (finite on separable classes). a < 0 is kept: it says
    the direction is anti-correlated with the labels.

    Returns (probe, details) with details {"solver": "mean_difference" | "lda", "shrinkage": None
    for mean_difference, the number given, or for "auto" the Ledoit-Wolf coefficient of each class
    [class 0, class 1], "calibration": {"scale": a, "bias": b}, "statistics_seconds": the time of the
    statistics pass and the solve}.

    Raises ProbeLabError for a dataset without labels, with fewer than two classes, with a bad
    `shrinkage`, or whose statistics are not finite (rows holding NaN or Inf).
    """
    kind = ProbeKind(kind)
    if kind not in (ProbeKind.mean_difference, ProbeKind.lda):
        raise ValueError(f"class_mean_probe fits mean_difference or lda probes, not {kind.value}")
    if kind is ProbeKind.lda:
        _check_shrinkage(shrinkage)
    labels = _checked_labels(train)

    started = time.perf_counter()
    moments = accumulate_class_moments(
        train, labels, scatter=kind is ProbeKind.lda, fourth=kind is ProbeKind.lda and shrinkage == AUTO
    )
    difference = moments[1].mean - moments[0].mean
    used: float | list[float] | None = None
    if kind is ProbeKind.lda:
        total = sum(m.count for m in moments)
        covariance = torch.zeros((train.dim, train.dim), dtype=torch.float64, device=train.device)
        coefficients = []
        for part in moments:
            if shrinkage == AUTO:
                part_cov, coefficient = ledoit_wolf_covariance(part)
                coefficients.append(coefficient)
            else:
                part_cov = _shrunk_covariance(part.covariance(), float(shrinkage))
            covariance += (part.count / total) * part_cov
        used = coefficients if shrinkage == AUTO else float(shrinkage)
        direction = _solve_symmetric(covariance, difference)
    else:
        direction = difference
    direction_host = direction.cpu().numpy()
    seconds = time.perf_counter() - started
    if not np.isfinite(direction_host).all():
        raise ProbeLabError(f"{train.name}: the class statistics are not finite (do rows hold NaN or Inf?)")

    raw = direction_host.astype(np.float32)
    scores = decision_functions([ProbeWeights(raw, 0.0)], train)[:, 0]
    scale, bias = calibrate_scores(scores, labels)
    weight = (scale * raw.astype(np.float64)).astype(np.float32)
    details = {
        "solver": kind.value,
        "shrinkage": used,
        "calibration": {"scale": scale, "bias": bias},
        "statistics_seconds": seconds,
    }
    return ProbeWeights(weight, bias), details


@dataclass
class ClassMoments:
    """Float64 sums over one class's rows shifted by `shift` (y = x − shift), where the rows live.

    `total` Σy (D,); `scatter` Σyyᵀ, `cube` Σ(y²)yᵀ (cube[i, j] = Σ yᵢ²yⱼ) and `fourth` Σ(y²)(y²)ᵀ
    (D, D) when accumulated, else None.
    """

    shift: torch.Tensor
    count: int = 0
    total: torch.Tensor = field(init=False)
    scatter: torch.Tensor | None = None
    cube: torch.Tensor | None = None
    fourth: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.total = torch.zeros_like(self.shift)

    def add(self, rows: torch.Tensor) -> None:
        """Add float64 rows (k, D) on the shift's device."""
        shifted = rows - self.shift
        self.count += len(shifted)
        self.total += shifted.sum(0)
        if self.scatter is not None:
            self.scatter.addmm_(shifted.T, shifted)
        if self.cube is not None and self.fourth is not None:
            squares = shifted.square()
            self.cube.addmm_(squares.T, shifted)
            self.fourth.addmm_(squares.T, squares)

    @property
    def shifted_mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.shifted_mean

    def centered_scatter(self) -> torch.Tensor:
        """Σ (x − x̄)(x − x̄)ᵀ (D, D)."""
        if self.scatter is None:
            raise ValueError("the scatter was not accumulated")
        return self.scatter - torch.outer(self.total, self.total) / self.count

    def covariance(self) -> torch.Tensor:
        """The population covariance (sklearn's `empirical_covariance`)."""
        return self.centered_scatter() / self.count

    def centered_fourth(self) -> torch.Tensor:
        """Σ (xᵢ − x̄ᵢ)²(xⱼ − x̄ⱼ)² (D, D), expanded from the shifted raw moments."""
        if self.scatter is None or self.cube is None or self.fourth is None:
            raise ValueError("the fourth moments were not accumulated")
        m = self.shifted_mean
        squares = self.scatter.diagonal()
        m2 = m.square()
        result = self.fourth.clone()
        result -= 2 * self.cube * m[None, :]
        result -= 2 * self.cube.T * m[:, None]
        result += squares[:, None] * m2[None, :] + m2[:, None] * squares[None, :]
        result += 4 * torch.outer(m, m) * self.scatter
        result -= 2 * torch.outer(m * self.total, m2) + 2 * torch.outer(m2, m * self.total)
        result += self.count * torch.outer(m2, m2)
        return result


def accumulate_class_moments(
    data: ActivationDataset, labels: np.ndarray, *, scatter: bool, fourth: bool
) -> list[ClassMoments]:
    """[class 0, class 1] moments of `data` in one pass over blocks of its rows, where they live.

    labels: 0/1 (N,) in the dataset's order, both classes present. scatter: accumulate Σyyᵀ; fourth
    (needs scatter): also Σ(y²)yᵀ and Σ(y²)(y²)ᵀ. Each class is shifted by the mean of its rows in
    the first block that holds any.
    """
    device = data.device
    positive = torch.from_numpy(labels == 1).to(device)
    step = data.block_rows * (DEVICE_BLOCK_FACTOR if device.type != "cpu" else 1)
    moments: list[ClassMoments | None] = [None, None]
    for start in range(0, len(data), step):
        stop = min(start + step, len(data))
        block = data.read(np.arange(start, stop))
        in_block = positive[start:stop]
        for label, mask in ((0, ~in_block), (1, in_block)):
            rows = block[mask].to(torch.float64)
            if not len(rows):
                continue
            part = moments[label]
            if part is None:
                part = moments[label] = _empty_moments(rows.mean(0), scatter=scatter, fourth=fourth)
            part.add(rows)
    if moments[0] is None or moments[1] is None:
        raise ProbeLabError(f"{data.name}: the class statistics need rows of both classes")
    return [moments[0], moments[1]]


def ledoit_wolf_covariance(moments: ClassMoments) -> tuple[torch.Tensor, float]:
    """(covariance (D, D), Ledoit-Wolf coefficient) of one class, as sklearn's LDA `_cov(X, "auto")`.

    The rows are standardized by their std (a constant feature by 1, as StandardScaler does),
    `ledoit_wolf` shrinks that covariance towards μ·I (μ its mean variance) and the result is
    rescaled: (1 − α)·C + α·μ·diag(σ²), C the empirical covariance. The coefficient is
    `ledoit_wolf_shrinkage` of the standardized rows.
    """
    n = moments.count
    covariance = moments.covariance()
    variance = covariance.diagonal().clamp_min(0.0)
    mean = moments.mean
    constant = variance <= n * _FLOAT64_EPS * variance + (n * mean * _FLOAT64_EPS) ** 2
    scale = torch.where(constant, torch.ones_like(variance), variance.sqrt())
    dim = len(variance)
    standardized = covariance / torch.outer(scale, scale)
    trace = standardized.diagonal()
    mu = float(trace.sum()) / dim
    if dim == 1:
        coefficient = 0.0
    else:
        squares = scale.square()
        beta_sum = float((moments.centered_fourth() / torch.outer(squares, squares)).sum())
        delta_sum = float(standardized.square().sum())
        beta = (beta_sum / n - delta_sum) / (dim * n)
        delta = (delta_sum - 2.0 * mu * float(trace.sum()) + dim * mu**2) / dim
        beta = min(beta, delta)
        coefficient = 0.0 if beta == 0 or delta <= 0 else min(max(beta / delta, 0.0), 1.0)
    shrunk = (1.0 - coefficient) * covariance
    shrunk.diagonal().add_(coefficient * mu * scale.square())
    return shrunk, coefficient


def calibrate_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) of the logistic regression P(y = 1) = σ(a·s + b) of 0/1 labels (both present) on scores s.

    Newton's method in float64 on the standardized scores, the bias unpenalized (so the mean
    predicted probability is the base rate) and the slope penalized by CALIBRATION_PENALTY / 2 · slope²
    per row (finite on separable scores). Scores with no spread give a = 0 and b = logit(base rate).
    """
    s = scores.astype(np.float64)
    y = labels.astype(np.float64)
    rate = float(y.mean())
    intercept = math.log(rate / (1.0 - rate))
    center, spread = float(s.mean()), float(s.std())
    if not spread > 0 or not math.isfinite(spread):
        return 0.0, intercept
    t = (s - center) / spread
    params = np.array([0.0, intercept])
    value = _calibration_loss(params, t, y)
    for _ in range(100):
        z = params[0] * t + params[1]
        p = np.exp(-np.logaddexp(0.0, -z))
        residual, curvature = p - y, p * (1.0 - p)
        gradient = np.array([np.mean(residual * t) + CALIBRATION_PENALTY * params[0], np.mean(residual)])
        hessian = np.array(
            [
                [np.mean(curvature * t * t) + CALIBRATION_PENALTY, np.mean(curvature * t)],
                [np.mean(curvature * t), np.mean(curvature) + 1e-12],
            ]
        )
        step = np.linalg.solve(hessian, gradient)
        decrease = float(gradient @ step)
        if decrease < 1e-20:
            break
        length = 1.0
        while length > 1e-10:
            trial = params - length * step
            trial_value = _calibration_loss(trial, t, y)
            if trial_value <= value - 1e-4 * length * decrease:
                break
            length /= 2
        else:
            break
        params, value = trial, trial_value
    slope = float(params[0]) / spread
    return slope, float(params[1]) - slope * center


def _calibration_loss(params: np.ndarray, t: np.ndarray, y: np.ndarray) -> float:
    z = params[0] * t + params[1]
    return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * CALIBRATION_PENALTY * params[0] ** 2)


def _empty_moments(shift: torch.Tensor, *, scatter: bool, fourth: bool) -> ClassMoments:
    dim = len(shift)

    def square() -> torch.Tensor:
        return torch.zeros((dim, dim), dtype=torch.float64, device=shift.device)

    return ClassMoments(
        shift,
        scatter=square() if scatter else None,
        cube=square() if fourth else None,
        fourth=square() if fourth else None,
    )


def _shrunk_covariance(covariance: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """sklearn's `shrunk_covariance`: (1 − α)·C + α·(tr C / D)·I."""
    mu = float(covariance.diagonal().sum()) / len(covariance)
    shrunk = (1.0 - shrinkage) * covariance
    shrunk.diagonal().add_(shrinkage * mu)
    return shrunk


def _solve_symmetric(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Σ⁻¹·rhs in float64 where Σ lives: Cholesky, or for a singular Σ the minimum-norm least-squares
    solution (eigenvalues below D·eps·λ_max treated as zero)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        solution = torch.cholesky_solve(rhs[:, None], factor)[:, 0]
        if bool(torch.isfinite(solution).all()):
            return solution
    values, vectors = torch.linalg.eigh(matrix)
    cutoff = len(matrix) * _FLOAT64_EPS * float(values.abs().max())
    inverse = torch.where(values.abs() > cutoff, 1.0 / values, torch.zeros_like(values))
    return vectors @ (inverse * (vectors.T @ rhs))


def _check_shrinkage(shrinkage: float | str) -> None:
    if shrinkage == AUTO:
        return
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, Real) or not 0.0 <= float(shrinkage) <= 1.0:
        raise ProbeLabError(f"probe.shrinkage must be auto or a number in [0, 1], got {shrinkage!r}")


def _checked_labels(train: ActivationDataset) -> np.ndarray:
    if train.labels is None:
        raise ProbeLabError(f"{train.name}: a mean_difference or lda probe needs labels")
    labels = np.asarray(train.labels)
    counts = np.bincount(labels, minlength=2)
    if counts[0] == 0 or counts[1] == 0:
        present = int(np.flatnonzero(counts)[0]) if counts.any() else None
        found = "no rows" if present is None else f"only class {present}"
        raise ProbeLabError(f"{train.name}: a mean_difference or lda probe needs both classes 0 and 1, found {found}")
    return labels
