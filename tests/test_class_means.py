"""Closed-form probes from class statistics (probe_lab.fit.class_means) against numpy and sklearn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf, ledoit_wolf_shrinkage
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

import probe_lab.data.dataset as dataset_module
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.tables import MappedFile, map_npy
from probe_lab.errors import ProbeLabError
from probe_lab.fit.class_means import accumulate_class_moments, class_mean_probe, ledoit_wolf_covariance
from probe_lab.settings.probe import ProbeKind


def correlated_task(
    n: int = 3000,
    dim: int = 12,
    *,
    offset: float = 50.0,
    signal: float = 0.4,
    positive_rate: float = 0.35,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (float64) of two Gaussian classes sharing a correlated covariance (condition number 25),
    every feature's mean near `offset`, class 1 shifted by `signal`·N(0, I)."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    mixing = rotation * np.sqrt(np.geomspace(0.2, 5.0, dim)) @ rotation.T  # covariance eigenvalues 0.2 … 5
    y = (rng.random(n) < positive_rate).astype(np.int64)
    shift = signal * rng.standard_normal(dim)
    x = rng.standard_normal((n, dim)) @ mixing + offset + rng.standard_normal(dim) + y[:, None] * shift
    return x, y


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def stored(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(the rows as stored in `dtype`, the same values as float64 for the references)."""
    kept = x.astype(dtype)
    return kept, kept.astype(np.float64)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_mean_difference_is_the_difference_of_class_means(dtype: str) -> None:
    x, y = correlated_task()
    kept, reference_x = stored(x, dtype)
    probe, details = class_mean_probe(ActivationDataset(kept, y), ProbeKind.mean_difference)
    expected = reference_x[y == 1].mean(0) - reference_x[y == 0].mean(0)
    assert probe.weight.dtype == np.float32 and probe.weight.shape == (12,)
    assert cosine(probe.weight, expected) >= 0.9999
    assert details["solver"] == "mean_difference" and details["shrinkage"] is None
    assert details["calibration"]["scale"] > 0
    np.testing.assert_allclose(probe.weight, details["calibration"]["scale"] * expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shrinkage", ["auto", 0.0, 0.3])
def test_lda_direction_is_sklearns(shrinkage: float | str, dtype: str) -> None:
    x, y = correlated_task(n=4000)
    kept, reference_x = stored(x, dtype)
    probe, details = class_mean_probe(ActivationDataset(kept, y), ProbeKind.lda, shrinkage=shrinkage)
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(reference_x, y).coef_[0]
    assert cosine(probe.weight, reference) >= 0.9999
    assert details["solver"] == "lda"
    if shrinkage == "auto":
        assert len(details["shrinkage"]) == 2 and all(0 < a < 1 for a in details["shrinkage"])
    else:
        assert details["shrinkage"] == shrinkage


@pytest.mark.parametrize("blocks", ["one block", "many blocks"])
def test_ledoit_wolf_is_sklearns_on_each_class_standardized(blocks: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = correlated_task(n=1500, offset=50.0, positive_rate=0.5, seed=3)
    x[:, 5] = 7.25  # a constant feature: StandardScaler's std is 1 there
    if blocks == "many blocks":
        monkeypatch.setattr(dataset_module, "BLOCK_BYTES", 4 << 10)
    data = ActivationDataset(x.astype(np.float32), y)
    assert (data.block_rows < 200) == (blocks == "many blocks")
    reference_x = x.astype(np.float32).astype(np.float64)
    probe, details = class_mean_probe(data, ProbeKind.lda, shrinkage="auto")
    moments = accumulate_class_moments(data, y, scatter=True, fourth=True)
    for label in (0, 1):
        rows = reference_x[y == label]
        scaler = StandardScaler().fit(rows)
        standardized = scaler.transform(rows)
        expected = ledoit_wolf_shrinkage(standardized)
        assert details["shrinkage"][label] == pytest.approx(expected, abs=1e-6)
        covariance, coefficient = ledoit_wolf_covariance(moments[label])
        assert coefficient == pytest.approx(expected, abs=1e-6)
        expected_cov = scaler.scale_[:, None] * ledoit_wolf(standardized)[0] * scaler.scale_[None, :]
        np.testing.assert_allclose(covariance.numpy(), expected_cov, rtol=1e-6, atol=1e-9)
        centered = rows - rows.mean(0)
        fourth = (centered**2).T @ (centered**2)
        np.testing.assert_allclose(moments[label].centered_fourth().numpy(), fourth, rtol=1e-7, atol=1e-6)
    assert np.isfinite(probe.weight).all()
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(reference_x, y).coef_[0]
    assert cosine(probe.weight, reference) >= 0.9999


@pytest.mark.parametrize("shrinkage", ["auto", 0.3])
def test_large_feature_means_do_not_cancel(shrinkage: float | str) -> None:
    x, y = correlated_task(n=2000, offset=1e4)
    reference_x = x.astype(np.float32).astype(np.float64)
    probe, details = class_mean_probe(ActivationDataset(x.astype(np.float32), y), ProbeKind.lda, shrinkage=shrinkage)
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(reference_x, y).coef_[0]
    assert cosine(probe.weight, reference) >= 0.9999
    if shrinkage == "auto":
        for label in (0, 1):
            standardized = StandardScaler().fit_transform(reference_x[y == label])
            assert details["shrinkage"][label] == pytest.approx(ledoit_wolf_shrinkage(standardized), abs=1e-6)


@pytest.mark.parametrize(
    ("kind", "shrinkage"), [(ProbeKind.mean_difference, "auto"), (ProbeKind.lda, "auto"), (ProbeKind.lda, 0.3)]
)
def test_streamed_and_in_memory_alike(
    kind: ProbeKind, shrinkage: float | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = correlated_task(n=2000)
    x = x.astype(np.float32)
    whole = ActivationDataset(x, y)
    assert whole.block_rows >= len(whole)  # one block per pass
    in_memory, in_memory_details = class_mean_probe(whole, kind, shrinkage=shrinkage)

    monkeypatch.setattr(dataset_module, "BLOCK_BYTES", 4 << 10)
    np.save(tmp_path / "x.npy", x)
    source = map_npy(tmp_path / "x.npy")
    assert isinstance(source, MappedFile)
    mapped_data = ActivationDataset(source, y)
    assert mapped_data.block_rows * 10 < len(mapped_data)  # many blocks per pass
    mapped, _ = class_mean_probe(mapped_data, kind, shrinkage=shrinkage)

    order = np.random.default_rng(1).permutation(len(x))
    shuffled, _ = class_mean_probe(ActivationDataset(x, y).subset(order), kind, shrinkage=shrinkage)

    for other in (mapped, shuffled):
        assert cosine(other.weight, in_memory.weight) >= 0.9999
        assert other.bias == pytest.approx(in_memory.bias, rel=1e-3, abs=1e-3)
        np.testing.assert_allclose(other.weight, in_memory.weight, rtol=1e-3, atol=1e-5)
    assert in_memory_details["calibration"]["bias"] == pytest.approx(in_memory.bias)


@pytest.mark.parametrize("kind", [ProbeKind.mean_difference, ProbeKind.lda])
def test_calibrated_probabilities_are_sensible(kind: ProbeKind) -> None:
    x, y = correlated_task(n=12000, signal=0.5, positive_rate=0.3, seed=5)
    train, test = slice(0, 4000), slice(4000, None)
    probe, details = class_mean_probe(ActivationDataset(x[train].astype(np.float32), y[train]), kind, shrinkage=0.0)
    scale = details["calibration"]["scale"]
    assert scale > 0
    direction = probe.weight.astype(np.float64) / scale
    test_x = x[test].astype(np.float32)
    probabilities = probe.predict_proba(test_x)
    assert roc_auc_score(y[test], probe.decision_function(test_x)) == pytest.approx(
        roc_auc_score(y[test], test_x.astype(np.float64) @ direction), abs=1e-3
    )
    assert roc_auc_score(y[test], probabilities) > 0.8
    assert abs(probabilities.mean() - y[test].mean()) < 0.02
    assert abs(probe.predict_proba(x[train].astype(np.float32)).mean() - y[train].mean()) < 1e-3
    if kind is ProbeKind.lda:
        # equal-covariance Gaussian classes: Σ⁻¹(μ₁ − μ₀)·x is already the log-odds, so the scale is about 1
        assert scale == pytest.approx(1.0, abs=0.1)


def test_separable_classes_give_a_finite_confident_probe() -> None:
    rng = np.random.default_rng(2)
    y = np.arange(400) % 2
    x = rng.standard_normal((400, 6)) + 50.0
    x[:, 0] += np.where(y == 1, 20.0, -20.0)
    x[:, 4] = 3.0
    for kind in (ProbeKind.mean_difference, ProbeKind.lda):
        probe, details = class_mean_probe(ActivationDataset(x.astype(np.float32), y), kind)
        assert np.isfinite(probe.weight).all() and np.isfinite(probe.bias)
        assert 0 < details["calibration"]["scale"] < 1e4
        p = probe.predict_proba(x.astype(np.float32))
        assert np.all((p > 0.99) == (y == 1)) and np.all((p < 0.01) == (y == 0))


def test_bad_input_is_refused() -> None:
    x, y = correlated_task(n=200)
    with pytest.raises(ProbeLabError, match="only class 1"):
        class_mean_probe(ActivationDataset(x.astype(np.float32), np.ones(200, dtype=np.int64)), ProbeKind.lda)
    with pytest.raises(ProbeLabError, match="only class 0"):
        class_mean_probe(ActivationDataset(x.astype(np.float32), np.zeros(200)), ProbeKind.mean_difference)
    with pytest.raises(ProbeLabError, match="needs labels"):
        class_mean_probe(ActivationDataset(x.astype(np.float32)), ProbeKind.mean_difference)
    with pytest.raises(ProbeLabError, match="shrinkage"):
        class_mean_probe(ActivationDataset(x.astype(np.float32), y), ProbeKind.lda, shrinkage=1.5)
    with pytest.raises(ValueError, match="logistic"):
        class_mean_probe(ActivationDataset(x.astype(np.float32), y), ProbeKind.logistic)
