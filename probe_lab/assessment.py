"""Judging a trained probe on a run's held-out rows: metrics, thresholds, intervals and controls.

`assess` scores the validation and test splits (the validation rows by their out-of-fold scores when
the probe was chosen by cross-validation), picks the balanced threshold on validation, sets a threshold
at each `eval.target_fpr` on the negatives of `eval.control` (else on the validation negatives), reports
each threshold's recall on the test positives and false-positive rate on the test negatives, and the
test metrics' bootstrap intervals. `control_probes` trains the controls of `eval.controls`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from probe_lab import metrics as metrics_lib
from probe_lab.bootstrap import bootstrap_intervals
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.sources import layer_count, load_dataset
from probe_lab.data.splits import Splits
from probe_lab.errors import ProbeLabError
from probe_lab.probe import ProbeWeights, sigmoid
from probe_lab.report.run_log import RUN_LOG
from probe_lab.settings.data import LayeredData, renamed_data_settings
from probe_lab.settings.evaluation import EvalSettings
from probe_lab.thresholds import threshold_at_fpr

if TYPE_CHECKING:
    from probe_lab.backends.base import ProbeTrainer
    from probe_lab.settings.schema import RunConfig

log = logging.getLogger(__name__)

CONTROL = "eval.control negatives"
VALIDATION_NEGATIVES = "validation negatives"
# With probe.cv_folds: the fold probes' scores of the validation rows, not the refit probe's.
OUT_OF_FOLD_NEGATIVES = "out-of-fold validation negatives"


@dataclass(frozen=True)
class Evaluation:
    """Scores of the trained probe on the held-out splits, with the threshold picked on validation."""

    threshold: float
    val_proba: np.ndarray
    test_proba: np.ndarray
    val: dict[str, float]
    test: dict[str, float]
    test_per_sample: dict[str, Any] | None = None  # rows that come several to a sample (token stores)
    # One per eval.target_fpr: FprThreshold.to_dict() plus test_recall and test_fpr.
    thresholds: list[dict[str, Any]] = field(default_factory=list)
    test_intervals: dict[str, Any] | None = None  # {metric: {low, high}, confidence, resamples}


def assess(
    weights: ProbeWeights,
    splits: Splits,
    settings: EvalSettings,
    *,
    seed: int,
    val_logits: np.ndarray | None = None,
    out_of_fold: bool = False,
    control: ActivationDataset | None = None,
) -> Evaluation:
    """The probe's numbers on `splits` (which must have a test split).

    val_logits: the validation rows' scores, when the fit has them: the probe's own, or with
    `out_of_fold` those of a cross-validated choice's fold probes. control: negatives to set the
    false-positive-rate thresholds on.
    """
    if splits.test is None:
        raise ValueError("assess needs a test split")
    if val_logits is None:
        val_logits = weights.decision_function(splits.val)
    test_logits = weights.decision_function(splits.test)
    val_proba, test_proba = sigmoid(val_logits), sigmoid(test_logits)
    threshold = metrics_lib.pick_threshold(splits.val.labels, val_proba)
    if control is not None:
        negatives, source = weights.decision_function(control), CONTROL
    else:
        negatives = val_logits[splits.val.labels == 0]
        source = OUT_OF_FOLD_NEGATIVES if out_of_fold else VALIDATION_NEGATIVES
        if out_of_fold and settings.target_fpr:
            log.warning(
                "eval.target_fpr thresholds set on the fold probes' out-of-fold scores of the validation negatives, "
                "which run a little narrower than the refit probe's: set eval.control for thresholds of the refit "
                "probe itself"
            )
    thresholds = []
    for rate in settings.target_fpr:
        at_rate = threshold_at_fpr(negatives, rate, source)
        flagged = test_logits >= at_rate.logit
        thresholds.append(
            at_rate.to_dict()
            | {
                "test_recall": float(flagged[splits.test.labels == 1].mean()),
                "test_fpr": float(flagged[splits.test.labels == 0].mean()),
            }
        )
    intervals = None
    if settings.bootstrap_resamples:
        intervals = bootstrap_intervals(
            splits.test.labels,
            test_proba,  # the scores the point estimates are computed from
            resamples=settings.bootstrap_resamples,
            confidence=settings.confidence,
            seed=seed,
            groups=splits.test.groups,
            fprs=sorted({metrics_lib.LOW_FPR, *settings.target_fpr}, reverse=True),
        ) | {"confidence": settings.confidence, "resamples": settings.bootstrap_resamples}
    return Evaluation(
        threshold=threshold,
        val_proba=val_proba,
        test_proba=test_proba,
        val=metrics_lib.evaluate(splits.val.labels, val_proba, threshold, with_recall=False),
        test=metrics_lib.evaluate(splits.test.labels, test_proba, threshold),
        test_per_sample=(
            None
            if splits.test.groups is None
            else metrics_lib.per_sample(splits.test.labels, test_proba, splits.test.groups)
        ),
        thresholds=thresholds,
        test_intervals=intervals,
    )


def check_control(control: ActivationDataset, dim: int) -> None:
    """eval.control must be as wide as the training data and hold negatives only."""
    if control.dim != dim:
        raise ProbeLabError(f"eval.control ({control.name}): {control.dim} dims, the training data has {dim}")
    if control.labels is not None and np.any(control.labels == 1):
        raise ProbeLabError(
            f"eval.control ({control.name}): holds {int(np.sum(control.labels == 1))} positive rows; a control "
            "set is negatives only"
        )
    control.check_finite()


def control_probes(
    train: Callable[[ActivationDataset, ActivationDataset], ProbeTrainer],
    splits: Splits,
    probe_test_auroc: float,
    seed: int,
) -> dict[str, Any]:
    """The controls of eval.controls beside the probe's test AUROC.

    shuffled_labels: the same probe (`train(train_split, val_split)` fits a fresh trainer with the same
    settings and returns it) trained on the training and validation labels permuted with `seed` —
    whole samples' labels when rows come several to a sample — and scored on the real test labels.
    random_direction: a seeded Gaussian direction in raw activation space. Selectivity is the probe's
    test AUROC minus a control's.
    """
    assert splits.test is not None
    rng = np.random.default_rng(seed)
    trainer = train(_permuted(splits.train, rng), _permuted(splits.val, rng))
    assert trainer.weights is not None
    shuffled = metrics_lib.auroc(splits.test.labels, trainer.weights.decision_function(splits.test))
    direction = ProbeWeights(rng.standard_normal(splits.test.dim).astype(np.float32), 0.0)
    random_auroc = metrics_lib.auroc(splits.test.labels, direction.decision_function(splits.test))
    return {
        "shuffled_labels": {"test_auroc": shuffled, "val_auroc": trainer.val_auroc},
        "random_direction": {"test_auroc": random_auroc},
        "selectivity": probe_test_auroc - shuffled,
        "selectivity_random_direction": probe_test_auroc - random_auroc,
    }


def _permuted(split: ActivationDataset, rng: np.random.Generator) -> ActivationDataset:
    """A view of `split` with its labels permuted (per sample when rows come several to a sample)."""
    assert split.labels is not None
    view = split.subset(np.arange(len(split)))
    if split.groups is None:
        view.labels = rng.permutation(split.labels)
        return view
    _, first, row_sample = np.unique(split.groups, return_index=True, return_inverse=True)
    view.labels = rng.permutation(split.labels[first])[row_sample]
    return view


def load_control(settings: RunConfig, dim: int) -> ActivationDataset | None:
    """eval.control's negatives, read and checked; of the training layer when its rows hold layers and
    it names none (each layer's own with data.layer=all)."""
    control = settings.eval.control
    if control is None:
        return None
    if isinstance(control, LayeredData) and control.layer is None and settings.data.layer is not None:
        with renamed_data_settings("eval.control"):
            layered = layer_count(control) is not None
        if layered:
            control = dataclasses.replace(control, layer=settings.data.layer)
    with renamed_data_settings("eval.control"):
        negatives = load_dataset(control, settings.seed, require_labels=False)
    check_control(negatives, dim)
    RUN_LOG.info("control  %s: %d negative rows for the false-positive-rate thresholds", negatives.name, len(negatives))
    return negatives
