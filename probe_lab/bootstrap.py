"""Bootstrap confidence intervals of a probe's test metrics: AUROC, average precision, recall at low FPRs.

The bootstrap is stratified: each resample draws as many positives among the positives, and as many negatives
among the negatives, as the data has, so every resample holds both classes. With `groups` it is a cluster
bootstrap: whole samples (all the rows of one text) are drawn, within their class.

A resample is a multiplicity per row. Rows are ranked by score once; a chunk of resamples is then scored at
once from the cumulative counts of positives and negatives along that ranking, giving for each resample what
scikit-learn gives on the data with every row repeated its multiplicity times (`resample_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from probe_lab.errors import ProbeLabError

CHUNK_ELEMENTS = 1 << 20  # resamples × rows scored at once: at most some twenty arrays of this many 8-byte numbers


def recall_key(fpr: float) -> str:
    """The name of recall at false-positive rate `fpr`: 0.01 → "recall_at_1pct_fpr", 0.001 → "recall_at_0.1pct_fpr"."""
    return f"recall_at_{fpr * 100:g}pct_fpr"


def bootstrap_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
    fprs: Sequence[float] = (0.01,),
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals at `confidence` of AUROC, AP and recall at each false-positive rate.

    labels: (N,) 0/1; scores: (N,) finite, higher for class 1; groups: (N,) a sample id per row, for a
    cluster bootstrap that draws whole samples (every row of a sample must have the same label).
    Returns {"auroc": {"low", "high"}, "ap": {...}, recall_key(fpr): {...} for each of `fprs`}, where recall
    at FPR f is `probe_lab.metrics.recall_at_fpr(labels, scores, f)`. The same arguments give the same
    intervals. Raises ProbeLabError for bad input or settings.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, int | np.integer) or resamples < 1:
        raise ProbeLabError(f"bootstrap: resamples must be a positive integer, not {resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ProbeLabError(f"bootstrap: confidence must lie strictly between 0 and 1, not {confidence!r}")
    fprs = checked_fprs(fprs)
    ranking = Ranking.of(*checked_inputs(labels, scores))
    strata = Strata.of(ranking, groups)
    values = {name: np.empty(resamples) for name in metric_names(fprs)}
    done = 0
    for pos_weights, neg_weights in strata.weights(resamples, seed):
        for name, chunk in ranking.metrics(pos_weights, neg_weights, fprs).items():
            values[name][done : done + len(chunk)] = chunk
        done += len(pos_weights)
    tail = (1.0 - confidence) / 2.0
    return {
        name: {"low": float(np.quantile(column, tail)), "high": float(np.quantile(column, 1.0 - tail))}
        for name, column in values.items()
    }


def resample_weights(
    labels: np.ndarray, scores: np.ndarray, *, resamples: int, seed: int = 0, groups: np.ndarray | None = None
) -> np.ndarray:
    """(resamples, N) int64: each row's multiplicity in each resample `bootstrap_intervals` scores with these
    arguments, rows in the given order."""
    ranking = Ranking.of(*checked_inputs(labels, scores))
    strata = Strata.of(ranking, groups)
    weights = np.zeros((resamples, len(ranking.positives) + len(ranking.negatives)), dtype=np.int64)
    done = 0
    for pos_weights, neg_weights in strata.weights(resamples, seed):
        block = slice(done, done + len(pos_weights))
        weights[block, ranking.positives] = pos_weights
        weights[block, ranking.negatives] = neg_weights
        done += len(pos_weights)
    return weights


def resample_metrics(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, fprs: Sequence[float] = (0.01,)
) -> dict[str, np.ndarray]:
    """Per row of `weights` ((B, N) non-negative integer multiplicities of the rows, each row of it giving
    both classes some weight): roc_auc_score, average_precision_score and recall_at_fpr at each of `fprs`
    of the data with every row repeated its multiplicity times, under the names `bootstrap_intervals` uses."""
    ranking = Ranking.of(*checked_inputs(labels, scores))
    weights = np.asarray(weights, dtype=np.int64)
    return ranking.metrics(weights[:, ranking.positives], weights[:, ranking.negatives], checked_fprs(fprs))


def metric_names(fprs: Sequence[float]) -> list[str]:
    """The keys of the metrics, in order: auroc, ap, then one recall per false-positive rate."""
    return ["auroc", "ap", *(recall_key(fpr) for fpr in fprs)]


def checked_inputs(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as booleans and scores as float64, both 1-D of one length, with both classes present."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.shape != labels.shape:
        raise ProbeLabError(f"bootstrap: labels {labels.shape} and scores {scores.shape} must be 1-D of one length")
    if not np.isin(labels, (0, 1)).all():
        raise ProbeLabError("bootstrap: labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise ProbeLabError("bootstrap: scores must be finite")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ProbeLabError("bootstrap: labels must hold both classes")
    return labels, scores


def checked_fprs(fprs: Sequence[float]) -> list[float]:
    """The false-positive rates as floats, each within [0, 1]."""
    rates = [float(fpr) for fpr in fprs]
    if not all(0.0 <= fpr <= 1.0 for fpr in rates):
        raise ProbeLabError(f"bootstrap: false-positive rates must lie within [0, 1], not {list(fprs)}")
    return rates


@dataclass(frozen=True)
class Ranking:
    """Each class's rows in order of descending score (tied rows in row order), and for each row how many
    rows of either class score above it or at least as high, the counts the metrics are read from.

    For any weighting of the rows it gives the metrics of the data with each row repeated its weight times.
    """

    positives: np.ndarray  # (P,) row index of each positive, highest score first
    negatives: np.ndarray  # (M,) the same for the negatives
    pos_from_pos: np.ndarray | None  # (P,) positives scoring at least as high as each positive; None: 1, 2, …, P
    neg_from_pos: np.ndarray  # (P,) negatives scoring at least as high as each positive
    neg_above_pos: np.ndarray | None  # (P,) negatives scoring above each positive; None: neg_from_pos
    pos_above_neg: np.ndarray  # (M,) positives scoring above each negative
    tied_neg: np.ndarray  # (M,) whether a positive has the negative's score
    neg_level: np.ndarray  # (M,) each negative's distinct score: its index among them, highest first
    level_pos: np.ndarray  # (L,) per distinct score, highest first: positives scoring at least as high
    level_neg: np.ndarray  # (L,) the same for the negatives

    @classmethod
    def of(cls, labels: np.ndarray, scores: np.ndarray) -> Ranking:
        """The ranking of boolean labels by float scores."""
        order = np.argsort(-scores, kind="stable")
        positives, negatives = order[labels[order]], order[~labels[order]]
        pos_keys, neg_keys = -scores[positives], -scores[negatives]  # ascending
        level_keys = -np.unique(scores)[::-1]
        pos_from_pos = np.searchsorted(pos_keys, pos_keys, side="right")
        neg_from_pos = np.searchsorted(neg_keys, pos_keys, side="right")
        neg_above_pos = np.searchsorted(neg_keys, pos_keys, side="left")
        pos_above_neg = np.searchsorted(pos_keys, neg_keys, side="left")
        return cls(
            positives=positives,
            negatives=negatives,
            pos_from_pos=None if np.array_equal(pos_from_pos, np.arange(1, len(pos_keys) + 1)) else pos_from_pos,
            neg_from_pos=neg_from_pos,
            neg_above_pos=None if np.array_equal(neg_above_pos, neg_from_pos) else neg_above_pos,
            pos_above_neg=pos_above_neg,
            tied_neg=np.searchsorted(pos_keys, neg_keys, side="right") > pos_above_neg,
            neg_level=np.searchsorted(level_keys, neg_keys),
            level_pos=np.searchsorted(pos_keys, level_keys, side="right"),
            level_neg=np.searchsorted(neg_keys, level_keys, side="right"),
        )

    def metrics(self, pos_weights: np.ndarray, neg_weights: np.ndarray, fprs: Sequence[float]) -> dict[str, np.ndarray]:
        """Per weighting (a row of pos_weights, (B, P), and of neg_weights, (B, M): integer multiplicities of
        the positives and the negatives in this ranking's order, some of each class non-zero): AUROC, AP and
        recall at each of `fprs`, as `resample_metrics` describes.

        AUROC is the Mann–Whitney count of (positive, negative) pairs the scores order rightly, a tie counting
        half; AP sums each positive's weight times the precision at its score.
        """
        tp, fp = cumulative(pos_weights), cumulative(neg_weights)
        positives, negatives = tp[:, -1], fp[:, -1]
        hits = tp[:, 1:] if self.pos_from_pos is None else np.take(tp, self.pos_from_pos, axis=1)
        false_hits = np.take(fp, self.neg_from_pos, axis=1)
        if self.neg_above_pos is None:
            twice_lost = 2 * np.einsum("ij,ij->i", pos_weights, false_hits)
        else:
            twice_lost = np.einsum("ij,ij->i", pos_weights, false_hits + np.take(fp, self.neg_above_pos, axis=1))
        pairs = 2.0 * positives * negatives
        out = {"auroc": (pairs - twice_lost) / pairs}
        precision = hits / np.maximum(hits + false_hits, 1)
        out["ap"] = np.einsum("ij,ij->i", pos_weights, precision) / positives
        for fpr in fprs:
            allowed = largest_count(fpr, negatives)
            crossing = count_at_most(fp[:, 1:], allowed)  # the first negative that takes the count past it
            inside = crossing < len(self.negatives)
            at = np.minimum(crossing, len(self.negatives) - 1)
            found = np.where(inside, tp[np.arange(len(tp)), self.pos_above_neg[at]], positives)
            if (redo := np.flatnonzero(inside & self.tied_neg[at])).size:
                levels = int(self.neg_level[at[redo]].max()) + 1
                found[redo] = self.roc_point_hits(tp, fp, redo, allowed[redo], levels)
            out[recall_key(fpr)] = found / positives
        return out

    def roc_point_hits(
        self, tp: np.ndarray, fp: np.ndarray, rows: np.ndarray, allowed: np.ndarray, levels: int
    ) -> np.ndarray:
        """For the weightings `rows` of `cumulative` counts tp and fp, the most true positives among the points
        of sklearn's roc_curve with at most `allowed` false positives, read from the first `levels` distinct
        scores (which must hold every such point and the point after the last of them).

        roc_curve has one point per distinct score of the repeated data (a score of non-zero weight) and drops
        a point whose step from the point before equals its step to the point after (both counts), unless it
        is the first or the last; where such a dropped point sits on a step that adds positives and negatives
        together, the answer is that of an earlier point.
        """
        level_tp = tp[np.ix_(rows, self.level_pos[:levels])]
        level_fp = fp[np.ix_(rows, self.level_neg[:levels])]
        step_tp = np.diff(level_tp, axis=1, prepend=0)
        step_fp = np.diff(level_fp, axis=1, prepend=0)
        present = (step_tp + step_fp) > 0
        position = np.arange(levels)
        first_present = np.minimum.accumulate(np.where(present, position, levels)[:, ::-1], axis=1)[:, ::-1]
        following = np.concatenate([first_present[:, 1:], np.full((len(rows), 1), levels)], axis=1)
        stop = np.full((len(rows), 1), -1)
        same_step = (np.take_along_axis(np.concatenate([step_tp, stop], axis=1), following, axis=1) == step_tp) & (
            np.take_along_axis(np.concatenate([step_fp, stop], axis=1), following, axis=1) == step_fp
        )
        dropped = same_step & (position != np.argmax(present, axis=1)[:, None])
        kept = present & ~dropped & (level_fp <= allowed[:, None])
        return np.where(kept, level_tp, 0).max(axis=1)


@dataclass(frozen=True)
class Strata:
    """What a resample draws in each class: its units (the rows, or with groups the samples) and, per row of
    the class in ranking order, its unit (None: each row is its own unit, in ranking order); and the rows.

    A sample's units are numbered by their best-ranked row, so one row per sample resamples as rows do.
    """

    pos_units: int
    neg_units: int
    pos_unit_of_row: np.ndarray | None
    neg_unit_of_row: np.ndarray | None
    rows: int

    @classmethod
    def of(cls, ranking: Ranking, groups: np.ndarray | None) -> Strata:
        """Rows as units without groups; else each sample, all of whose rows must share a label."""
        rows = len(ranking.positives) + len(ranking.negatives)
        if groups is None:
            return cls(len(ranking.positives), len(ranking.negatives), None, None, rows)
        groups = np.asarray(groups)
        if groups.shape != (rows,):
            raise ProbeLabError(f"bootstrap: groups {groups.shape} must be 1-D, one sample id per row")
        pos_groups, neg_groups = groups[ranking.positives], groups[ranking.negatives]
        if len(mixed := np.intersect1d(pos_groups, neg_groups)):
            raise ProbeLabError(f"bootstrap: sample {mixed[0].item()!r} has rows labelled 0 and rows labelled 1")
        pos_units, pos_unit_of_row = units_in_rank_order(pos_groups)
        neg_units, neg_unit_of_row = units_in_rank_order(neg_groups)
        return cls(pos_units, neg_units, pos_unit_of_row, neg_unit_of_row, rows)

    def weights(self, resamples: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Chunks of the resamples in order, as (positive rows' weights, negative rows' weights) in ranking order.

        Each class draws from its own stream of `seed`, so the resamples do not depend on the chunk size.
        """
        pos_rng, neg_rng = (np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(2))
        chunk = max(1, min(resamples, CHUNK_ELEMENTS // self.rows))
        for start in range(0, resamples, chunk):
            count = min(chunk, resamples - start)
            yield (
                row_weights(unit_counts(pos_rng, self.pos_units, count), self.pos_unit_of_row),
                row_weights(unit_counts(neg_rng, self.neg_units, count), self.neg_unit_of_row),
            )


def units_in_rank_order(groups: np.ndarray) -> tuple[int, np.ndarray]:
    """For rows' sample ids in ranking order: the number of samples and each row's sample, the samples
    numbered in order of their first row."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    number = np.empty(len(first), dtype=np.int64)
    number[np.argsort(first, kind="stable")] = np.arange(len(first))
    return len(first), number[inverse.ravel()]


def unit_counts(rng: np.random.Generator, units: int, count: int) -> np.ndarray:
    """(count, units) int64: how often each unit is drawn in each of `count` draws of `units` with replacement."""
    draws = rng.integers(0, units, size=(count, units))
    counts = np.empty((count, units), dtype=np.int64)
    for row, drawn in zip(counts, draws, strict=True):
        row[:] = np.bincount(drawn, minlength=units)
    return counts


def row_weights(counts: np.ndarray, unit_of_row: np.ndarray | None) -> np.ndarray:
    """Each row's weight: its unit's count."""
    return counts if unit_of_row is None else counts[:, unit_of_row]


def cumulative(weights: np.ndarray) -> np.ndarray:
    """(B, n + 1) int64: the running totals of (B, n) weights along each row, from 0."""
    totals = np.zeros((len(weights), weights.shape[1] + 1), dtype=np.int64)
    np.cumsum(weights, axis=1, out=totals[:, 1:])
    return totals


def count_at_most(ascending: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Per row of `ascending` ((B, n), each row non-decreasing), how many of its entries are at most the row's
    limit: a bisection of all rows at once."""
    rows = np.arange(len(ascending))
    low, high = np.zeros(len(ascending), dtype=np.int64), np.full(len(ascending), ascending.shape[1])
    for _ in range(int(ascending.shape[1]).bit_length()):
        middle = (low + high) // 2
        below = ascending[rows, np.minimum(middle, ascending.shape[1] - 1)] <= limits
        low, high = np.where(below & (middle < high), middle + 1, low), np.where(below, high, middle)
    return low


def largest_count(fpr: float, totals: np.ndarray) -> np.ndarray:
    """Per total, the largest count m with m / total <= fpr as float64 divides it (as roc_curve's rates are)."""
    count = np.floor(fpr * totals).astype(np.int64) - 1
    for _ in range(3):
        count = np.where((count + 1) / totals <= fpr, count + 1, count)
    return count
