"""Decision thresholds at a false-positive rate, set on the scores of negatives.

A monitor flags a row when its logit is at or above the threshold. The threshold for a target rate f
on n negative scores flags at most ⌊f·n⌋ of them and sits above the (⌊f·n⌋+1)-th highest score, halfway
to the next higher one: scores recomputed in float32 elsewhere (another block size, another device)
then fall on the same side of it. Thresholds are kept as logits (probabilities saturate at 1.0 for confident rows, which
would merge distinct scores) and reported as probabilities too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from probe_lab.probe import sigmoid


@dataclass(frozen=True)
class FprThreshold:
    """A threshold set at `target_fpr` on `negatives` negative scores from `source`."""

    target_fpr: float
    logit: float
    source: str  # "eval.control negatives" or "validation negatives"
    negatives: int
    reached_fpr: float  # the share of those negatives flagged: at most target_fpr

    @property
    def probability(self) -> float:
        return float(sigmoid(np.array([self.logit]))[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_fpr": self.target_fpr,
            "logit": self.logit,
            "probability": self.probability,
            "source": self.source,
            "negatives": self.negatives,
            "reached_fpr": self.reached_fpr,
        }


def threshold_at_fpr(negative_logits: np.ndarray, target_fpr: float, source: str) -> FprThreshold:
    """A logit threshold that flags at most ⌊target_fpr·n⌋ of the n negatives, and no fewer than a
    threshold anywhere between the score it must exceed and the next higher score would.

    With fewer than 1/target_fpr negatives no false positive is allowed, and the threshold sits just
    above the highest negative score (the rate reached is then 0, the set too small to say more).
    """
    scores = np.sort(np.asarray(negative_logits, dtype=np.float64))[::-1]
    if len(scores) == 0:
        raise ValueError("threshold_at_fpr needs at least one negative score")
    allowed = math.floor(target_fpr * len(scores) + 1e-9)  # 1e-9: 0.01·300 is 2.9999999999999996
    if allowed >= len(scores):
        logit = -math.inf
    else:
        above = scores[scores > scores[allowed]]
        edge = scores[allowed]
        logit = float((edge + above[-1]) / 2 if len(above) else edge + max(abs(edge), 1.0) * 1e-3)
    flagged = int(np.count_nonzero(scores >= logit))
    return FprThreshold(target_fpr, logit, source, len(scores), flagged / len(scores))


def operating_point(threshold: FprThreshold, labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Recall on the positives and false-positive rate on the negatives of a labelled split."""
    flagged = logits >= threshold.logit
    return {
        "recall": float(flagged[labels == 1].mean()),
        "fpr": float(flagged[labels == 0].mean()),
    }
