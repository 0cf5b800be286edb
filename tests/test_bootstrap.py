"""probe_lab.bootstrap: stratified (and cluster) bootstrap intervals of AUROC, AP and recall at low FPR."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from probe_lab import bootstrap
from probe_lab.bootstrap import bootstrap_intervals, recall_key, resample_metrics, resample_weights
from probe_lab.errors import ProbeLabError
from probe_lab.metrics import recall_at_fpr

FPRS = (0.0, 0.01, 0.1, 0.3, 0.7, 1.0)


def sample_data(n: int, seed: int = 0, *, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n rows, about 30% positives, scores a unit normal shifted by 1 for positives (rounded if asked)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    scores = rng.normal(size=n) + labels
    return labels, scores if decimals is None else np.round(scores, decimals)


def sklearn_metrics(labels: np.ndarray, scores: np.ndarray, fprs: tuple[float, ...]) -> dict[str, float]:
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "ap": float(average_precision_score(labels, scores)),
        **{recall_key(fpr): recall_at_fpr(labels, scores, fpr) for fpr in fprs},
    }


def assert_equal_on_repeated_rows(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> None:
    ours = resample_metrics(labels, scores, weights, FPRS)
    for row, multiplicity in enumerate(weights):
        expected = sklearn_metrics(np.repeat(labels, multiplicity), np.repeat(scores, multiplicity), FPRS)
        got = {name: values[row] for name, values in ours.items()}
        assert got == pytest.approx(expected, rel=0, abs=1e-12), (row, multiplicity)


@pytest.mark.parametrize("decimals", [None, 1, 0], ids=["distinct", "tied", "few scores"])
def test_resample_metrics_are_sklearns_on_the_repeated_rows(decimals: int | None) -> None:
    labels, scores = sample_data(300, decimals=decimals)
    assert_equal_on_repeated_rows(labels, scores, resample_weights(labels, scores, resamples=8, seed=1))


def test_resample_metrics_are_sklearns_under_any_weights_with_ties_between_classes() -> None:
    rng = np.random.default_rng(2)
    for _ in range(60):
        n = int(rng.integers(2, 30))
        labels = rng.integers(0, 2, n)
        labels[:2] = (0, 1)
        scores = rng.integers(0, rng.integers(1, 6), n).astype(float)
        weights = rng.integers(0, 3, size=(3, n))
        weights[:, :2] += 1
        assert_equal_on_repeated_rows(labels, scores, weights)


def test_recall_skips_the_roc_points_roc_curve_drops() -> None:
    """roc_curve drops the middle one of collinear points; recall_at_fpr then reads the point before it."""
    labels, scores = np.array([1, 0, 1, 0, 1, 0]), np.array([3.0, 3.0, 2.0, 2.0, 1.0, 1.0])
    assert recall_at_fpr(labels, scores, 0.7) == pytest.approx(1 / 3)
    got = resample_metrics(labels, scores, np.ones((1, 6), dtype=int), (0.7,))
    assert got[recall_key(0.7)][0] == pytest.approx(1 / 3)


def test_each_resample_keeps_the_class_counts() -> None:
    labels, scores = sample_data(500)
    weights = resample_weights(labels, scores, resamples=50, seed=3)
    assert weights.shape == (50, 500) and weights.min() >= 0
    assert (weights[:, labels == 1].sum(axis=1) == labels.sum()).all()
    assert (weights[:, labels == 0].sum(axis=1) == (labels == 0).sum()).all()
    assert (weights == 0).mean() == pytest.approx(np.exp(-1), abs=0.02)  # drawn with replacement


def test_intervals_hold_the_estimate_on_all_rows() -> None:
    labels, scores = sample_data(2000, seed=4)
    intervals = bootstrap_intervals(labels, scores, resamples=500, fprs=(0.01, 0.1))
    assert list(intervals) == ["auroc", "ap", "recall_at_1pct_fpr", "recall_at_10pct_fpr"]
    for name, estimate in sklearn_metrics(labels, scores, (0.01, 0.1)).items():
        assert list(intervals[name]) == ["low", "high"]
        assert intervals[name]["low"] < estimate < intervals[name]["high"], name


def test_a_lower_confidence_gives_a_narrower_interval() -> None:
    labels, scores = sample_data(1000, seed=5)
    wide, narrow = (bootstrap_intervals(labels, scores, resamples=400, confidence=c)["auroc"] for c in (0.95, 0.5))
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]


def width(interval: dict[str, float]) -> float:
    return interval["high"] - interval["low"]


def test_intervals_shrink_as_the_data_grows() -> None:
    small, large = (bootstrap_intervals(*sample_data(n, seed=6), resamples=500) for n in (200, 5000))
    for name in ("auroc", "ap", "recall_at_1pct_fpr"):
        assert width(large[name]) < 0.5 * width(small[name]), name


def test_the_seed_decides_the_intervals() -> None:
    labels, scores = sample_data(1000, seed=7)
    first, again, other = (bootstrap_intervals(labels, scores, resamples=200, seed=s) for s in (0, 0, 1))
    assert first == again
    assert first["auroc"]["low"] != other["auroc"]["low"] and first["auroc"]["high"] != other["auroc"]["high"]


def test_the_chunk_size_does_not_change_the_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    labels, scores = sample_data(1000, seed=8)
    groups = np.arange(1000) // 4
    labels = labels[groups * 4]
    whole = bootstrap_intervals(labels, scores, resamples=100, groups=groups)
    monkeypatch.setattr(bootstrap, "CHUNK_ELEMENTS", 3000)  # three resamples at a time
    assert bootstrap_intervals(labels, scores, resamples=100, groups=groups) == whole


def test_samples_of_identical_rows_resample_as_one_row_each() -> None:
    labels, scores = sample_data(300, seed=9)
    rows = 10
    grouped = bootstrap_intervals(
        np.repeat(labels, rows), np.repeat(scores, rows), resamples=200, groups=np.repeat(np.arange(300), rows)
    )
    one_row_each = bootstrap_intervals(labels, scores, resamples=200)
    for name in one_row_each:
        assert grouped[name] == pytest.approx(one_row_each[name], abs=1e-12), name


def test_a_sample_is_drawn_whole_and_within_its_class() -> None:
    rng = np.random.default_rng(10)
    sample_labels = np.array([0, 1] * 20)
    groups = np.repeat(np.arange(40), rng.integers(1, 6, 40))
    labels = sample_labels[groups]
    weights = resample_weights(labels, rng.normal(size=len(groups)), resamples=30, seed=1, groups=groups)
    per_sample = np.stack([np.bincount(groups, weights=row) / np.bincount(groups) for row in weights])
    assert (per_sample[:, groups] == weights).all()  # every row of a sample weighs the same
    assert (per_sample[:, sample_labels == 1].sum(axis=1) == 20).all()
    assert (per_sample[:, sample_labels == 0].sum(axis=1) == 20).all()


def test_clustered_rows_give_wider_intervals_with_groups() -> None:
    """Rows of a sample share most of their score: the samples, not the rows, are the independent draws."""
    rng = np.random.default_rng(11)
    samples, rows = 200, 20
    sample_labels = rng.integers(0, 2, samples)
    sample_scores = rng.normal(size=samples) + sample_labels
    groups = np.repeat(np.arange(samples), rows)
    labels, scores = sample_labels[groups], sample_scores[groups] + 0.1 * rng.normal(size=samples * rows)
    clustered = bootstrap_intervals(labels, scores, resamples=300, groups=groups)
    by_row = bootstrap_intervals(labels, scores, resamples=300)
    assert width(clustered["auroc"]) > 2 * width(by_row["auroc"])


def test_recall_keys_name_the_rate_in_percent() -> None:
    assert [recall_key(fpr) for fpr in (0.01, 0.001, 0.05, 0.1)] == [
        "recall_at_1pct_fpr",
        "recall_at_0.1pct_fpr",
        "recall_at_5pct_fpr",
        "recall_at_10pct_fpr",
    ]
    labels, scores = sample_data(200)
    assert list(bootstrap_intervals(labels, scores, resamples=20, fprs=(0.001,))) == [
        "auroc",
        "ap",
        "recall_at_0.1pct_fpr",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": np.ones(4)}, "both classes"),
        ({"labels": np.array([0, 1, 2, 1])}, "0 or 1"),
        ({"scores": np.array([0.1, np.nan, 0.3, 0.4])}, "finite"),
        ({"scores": np.zeros(3)}, "one length"),
        ({"groups": np.array([0, 0, 1, 1])}, "sample 0 has rows labelled 0 and rows labelled 1"),
        ({"groups": np.zeros(3)}, "one sample id per row"),
        ({"confidence": 1.0}, "confidence"),
        ({"resamples": 0}, "resamples"),
        ({"fprs": (0.01, 1.5)}, "false-positive rates"),
    ],
)
def test_bad_input_is_refused(kwargs: dict, message: str) -> None:
    arguments = {"labels": np.array([0, 1, 0, 1]), "scores": np.array([0.1, 0.2, 0.3, 0.4]), **kwargs}
    with pytest.raises(ProbeLabError, match=message):
        bootstrap_intervals(**arguments)
