"""Evaluation of probe scores: AUROC, average precision, accuracy at a threshold, recall at 1% FPR."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

LOW_FPR = 0.01  # the false positive rate of recall_at_1pct_fpr


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))


def aurocs(labels: np.ndarray, scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """AUROC of every column of `scores` (N, K) against 0/1 `labels` (N,), as `roc_auc_score` gives it
    column by column: the Mann–Whitney statistic with tied scores counted half (average ranks), for all
    columns from one sort where the scores are (on a GPU for scores computed there) — choosing among a
    path's probes scores many columns of many rows."""
    columns = torch.as_tensor(scores).T.double()  # (K, N)
    positive = torch.as_tensor(np.asarray(labels) == 1, device=columns.device)
    k, n = columns.shape
    ordered, order = torch.sort(columns, dim=1)
    # Ties share the mean of their 1-based positions: each tie group's first and last position.
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = (torch.cumsum(starts.long(), dim=1) - 1) + torch.arange(k, device=columns.device)[:, None] * n
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=columns.device).expand(k, n).reshape(-1)
    first = torch.full((k * n,), float(n + 1), dtype=torch.float64, device=columns.device)
    last = torch.zeros(k * n, dtype=torch.float64, device=columns.device)
    first.scatter_reduce_(0, group.reshape(-1), positions, reduce="amin")
    last.scatter_reduce_(0, group.reshape(-1), positions, reduce="amax")
    ranks = ((first + last) / 2)[group]  # (K, N), in sorted order
    n_positive = int(positive.sum())
    n_negative = n - n_positive
    rank_sums = (ranks * positive[order]).sum(dim=1)
    return ((rank_sums - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)).cpu().numpy()


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
