"""Evaluation of probe scores: AUROC, average precision, accuracy at a threshold, recall at 1% FPR."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

LOW_FPR = 0.01  # the false positive rate of recall_at_1pct_fpr


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))


def aurocs(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of every column of `scores` (N, K) against 0/1 `labels` (N,), as `roc_auc_score` gives it
    column by column: the Mann–Whitney statistic with tied scores counted half (average ranks), for all
    columns from one sort — choosing among a path's probes scores many columns of many rows."""
    ranks = rankdata(scores, axis=0)
    positive = np.asarray(labels) == 1
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    return (ranks[positive].sum(axis=0) - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)


def pick_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The probability threshold that maximizes Youden's J (TPR − FPR) on these (validation) rows."""
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """Highest true-positive rate reachable with a false-positive rate of at most `max_fpr`."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr].max())


def evaluate(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, *, with_recall: bool = True
) -> dict[str, float]:
    """auroc, ap, accuracy (predicting 1 when probability >= threshold) and recall_at_1pct_fpr."""
    metrics = {
        "auroc": auroc(labels, probabilities),
        "ap": float(average_precision_score(labels, probabilities)),
        "accuracy": float(np.mean((probabilities >= threshold) == labels)),
    }
    if with_recall:
        metrics["recall_at_1pct_fpr"] = recall_at_fpr(labels, probabilities, LOW_FPR)
    return metrics


def per_sample(labels: np.ndarray, probabilities: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Metrics of samples scored from their rows (every token of a text): `max` takes a sample's
    highest row score, `mean` the mean of its row scores; {samples, max: {auroc, ap}, mean: {auroc, ap}}."""
    samples, first, row_sample = np.unique(groups, return_index=True, return_inverse=True)
    counts = np.bincount(row_sample)
    highest = np.full(len(samples), -np.inf)
    np.maximum.at(highest, row_sample, probabilities)
    mean = np.bincount(row_sample, weights=probabilities) / counts
    sample_labels = labels[first]
    return {"samples": len(samples)} | {
        name: {"auroc": auroc(sample_labels, scores), "ap": float(average_precision_score(sample_labels, scores))}
        for name, scores in (("max", highest), ("mean", mean))
    }
