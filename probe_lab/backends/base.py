"""`ProbeTrainer`: the interface both backends share (the seed guide's trainer API).

A backend implements `_fit(train, val, regularizations, placement, standardize=) -> [FitResult]` (one
logistic probe per value of the regularization path, on raw or standardized features; none on the
processes of a data-parallel fit other than the first, which hold no probe and report nothing);
everything else — accepting arrays, tensors or file lists, holding out a validation split, deciding
the placement when the caller did not, choosing among candidates on validation or by cross-validation
(probe_lab.selection), the closed-form kinds (probe_lab.fit.class_means), scoring, prediction,
checkpoints — lives here once.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from probe_lab import metrics
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import split_dataset
from probe_lab.errors import ProbeLabError
from probe_lab.probe import ProbeWeights, device_decision_functions, load_probe, save_probe
from probe_lab.selection import Candidate, CandidateRecord, best_candidate, candidates, cross_validation_folds
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.settings.ignored import ignored_settings
from probe_lab.settings.parallel import ONE_PROCESS, Processes
from probe_lab.settings.placement import Placement, SplitBytes, decide_placement
from probe_lab.settings.probe import ProbeKind

log = logging.getLogger(__name__)

Activations = np.ndarray | torch.Tensor | Sequence[str | Path] | ActivationDataset


@dataclass
class FitResult:
    weights: ProbeWeights
    details: dict[str, Any] = field(default_factory=dict)  # solver, iterations, converged, ...
    # The probe's logits on the validation split the fit was given, in its row order (float32, where
    # the fit computed them), when the fit's own validation pass scored it with these weights.
    val_logits: torch.Tensor | None = None


@dataclass
class _Choice:
    """The probe a fit settles on, the candidate it is (None for the closed-form kinds), every
    candidate's record, the validation rows' scores, and the cross-validation summary when one ran."""

    result: FitResult
    candidate: Candidate | None
    records: list[CandidateRecord]
    val_scores: np.ndarray
    cross_validation: dict[str, Any] | None = None


class ProbeTrainer(ABC):
    """Trains a linear probe; after `fit`, `coef_` (D,) and `intercept_` act on raw activations."""

    backend: ClassVar[str]

    def __init__(
        self,
        input_dim: int,
        config: ProbeTrainingConfig | None = None,
        *,
        run_dir: str | Path | None = None,
        progress_bar: bool = False,
    ) -> None:
        """run_dir: where a backend may leave training logs; progress_bar: show progress while fitting."""
        if input_dim <= 0:
            raise ProbeLabError(f"input_dim must be positive, got {input_dim}")
        self.input_dim = input_dim
        self.config = config or ProbeTrainingConfig()
        self._check_config()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress_bar = progress_bar
        self.weights: ProbeWeights | None = None
        self.fit_details: dict[str, Any] = {}
        self.fit_seconds: float | None = None
        self.val_auroc: float | None = None
        # The value (and feature scaling) the probe was trained with; with a choice, the best, and
        # every candidate's record (`CandidateRecord.to_dict`). None for the closed-form kinds.
        self.regularization: float | None = None
        self.standardized: bool | None = None
        self.regularization_path: list[dict[str, Any]] | None = None
        # With probe.cv_folds: the folds, the choice and its mean fold AUROC.
        self.cross_validation: dict[str, Any] | None = None
        # Logits of the validation rows the validation metrics come from (out-of-fold with cv_folds).
        self.val_scores: np.ndarray | None = None
        self.placement: Placement | None = None  # where the last fit ran
        # False on a data-parallel fit's processes other than the first: they hold no probe after fit.
        self.leads = True

    @property
    def processes(self) -> Processes:
        """The processes a fit runs in (one, unless the backend trains data-parallel)."""
        return ONE_PROCESS

    # -- training -------------------------------------------------------------------------------
    def fit(
        self, X_train: Activations, y_train: Any = None, X_val: Activations | None = None, y_val: Any = None
    ) -> float:
        """Train on (X_train, y_train); returns the validation AUROC of the trained probe.

        Without a validation set, `config.validation_split` of the training rows is held out
        (stratified, seeded). X may be an array (N, D), a tensor, or a list of tensor file paths.
        """
        train = as_dataset(X_train, y_train, "X_train")
        if X_val is None:
            splits = split_dataset(train, self.config.validation_split, 0.0, self.config.seed)
            train, val = splits.train, splits.val
        else:
            val = as_dataset(X_val, y_val, "X_val")
        return self.fit_datasets(train, val)

    async def fit_from_arrays(
        self, X_train: Activations, y_train: Any, X_val: Activations | None = None, y_val: Any = None
    ) -> float:
        """The seed guide's awaitable spelling of `fit` (training itself is synchronous)."""
        return self.fit(X_train, y_train, X_val, y_val)

    def fit_datasets(
        self, train: ActivationDataset, val: ActivationDataset, placement: Placement | None = None
    ) -> float:
        """Train on prepared datasets (labels checked, both classes present); returns val AUROC.

        placement: where and how the fit runs, decided once per run by its caller; by default decided
        here from this trainer's config and the sizes of `train` and `val`.
        """
        for part in (train, val):
            if part.dim != self.input_dim:
                raise ProbeLabError(
                    f"{part.name}: activations have {part.dim} dims, the trainer expects {self.input_dim}"
                )
            if part.labels is None:
                raise ProbeLabError(f"{part.name}: labels are needed to train a probe")
            if len(np.unique(part.labels)) < 2:
                raise ProbeLabError(f"{part.name}: only one class present; a probe needs both 0 and 1")
            part.check_finite()
        if placement is None:
            sizes = SplitBytes(train.nbytes(), val.nbytes())
            placement = decide_placement(self.config, sizes, backend=self.backend, processes=self.processes)
        self.placement = placement
        ignored = ignored_settings(self.config, self.backend, placement)
        if ignored:
            log.warning(ignored)
        self._refuse_in_parallel(placement)
        start = time.perf_counter()
        if self.config.kind is not ProbeKind.logistic:
            choice = self._fit_class_means(train, val)
        elif self.config.cv_folds >= 2:
            choice = self._cross_validate(train, val, placement)
        else:
            choice = self._choose_on_validation(train, val, placement)
        self.fit_seconds = time.perf_counter() - start
        if choice is None:  # a data-parallel fit's process other than the first
            self.leads = False
            return math.nan
        self.weights = choice.result.weights
        self.fit_details = choice.result.details
        self.regularization = choice.candidate.regularization if choice.candidate is not None else None
        self.standardized = choice.candidate.standardize if choice.candidate is not None else None
        with_scaling = len(self.config.standardize_values) > 1
        self.regularization_path = (
            [record.to_dict(with_scaling) for record in choice.records] if len(choice.records) > 1 else None
        )
        self.cross_validation = choice.cross_validation
        self.val_scores = choice.val_scores
        self.val_auroc = metrics.auroc(val.labels, choice.val_scores)
        return self.val_auroc

    def _refuse_in_parallel(self, placement: Placement) -> None:
        """Cross-validation and the closed-form kinds run in one process."""
        if not placement.processes.data_parallel:
            return
        if self.config.kind is not ProbeKind.logistic:
            raise ProbeLabError(
                f"probe.kind={self.config.kind.value} is computed in one process: leave trainer.devices and "
                "trainer.num_nodes unset"
            )
        if self.config.cv_folds >= 2:
            raise ProbeLabError(
                "probe.cv_folds fits its folds in one process: leave trainer.devices and trainer.num_nodes unset"
            )

    def _choose_on_validation(
        self, train: ActivationDataset, val: ActivationDataset, placement: Placement
    ) -> _Choice | None:
        """Every candidate fitted on the training split and scored on the validation split."""
        options = candidates(self.config.regularization_values, self.config.standardize_values)
        # Every scaling is fitted on every process (a data-parallel fit's processes fit together);
        # only the first holds the probes.
        values, scalings = self.config.regularization_values, self.config.standardize_values
        fits = [self._fit(train, val, values, placement, standardize=scaling) for scaling in scalings]
        if not all(fits):
            return None
        results = [result for fitted in fits for result in fitted]
        if all(result.val_logits is not None for result in results):  # scored by the fits: not read again
            on_device = torch.stack([result.val_logits.to(results[0].val_logits.device) for result in results], 1)
        else:
            on_device = device_decision_functions([result.weights for result in results], val)
        val_aurocs, scores = metrics.aurocs(val.labels, on_device), on_device.cpu().numpy()
        records = [CandidateRecord(option, val_auroc=float(val_aurocs[k])) for k, option in enumerate(options)]
        best = best_candidate(np.array([record.score for record in records]))
        return _Choice(results[best], options[best], records, scores[:, best])

    def _cross_validate(self, train: ActivationDataset, val: ActivationDataset, placement: Placement) -> _Choice | None:
        """Stratified K-fold cross-validation over the training and validation rows together; the
        candidate with the best mean fold AUROC is refit on all of them. The validation rows' scores
        are their out-of-fold scores under that candidate (no row is scored by a probe trained on it)."""
        folds = self.config.cv_folds
        pooled = train.joined(val)
        parts = cross_validation_folds(pooled, folds, self.config.seed)
        options = candidates(self.config.regularization_values, self.config.standardize_values)
        fold_aurocs = np.empty((len(options), folds))
        out_of_fold = np.empty((len(options), len(pooled)), dtype=np.float32)
        by_scaling = [
            self._fit_folds(pooled, val, parts, self.config.regularization_values, placement, standardize=scaling)
            for scaling in self.config.standardize_values
        ]
        for number, (_, held_out_rows) in enumerate(parts):
            held_out = pooled.subset(held_out_rows)
            results = [result for fold_results in by_scaling for result in fold_results[number]]
            scores = device_decision_functions([result.weights for result in results], held_out)
            out_of_fold[:, held_out_rows] = scores.T.cpu().numpy()
            fold_aurocs[:, number] = metrics.aurocs(held_out.labels, scores)
        records = [CandidateRecord(option, fold_aurocs=tuple(fold_aurocs[k])) for k, option in enumerate(options)]
        best = best_candidate(np.array([record.score for record in records]))
        chosen = options[best]
        refit_rows, monitored = self._monitored(pooled, np.arange(len(pooled)), val, placement)
        refit = self._fit(refit_rows, monitored, [chosen.regularization], placement, standardize=chosen.standardize)[0]
        summary = {
            "folds": folds,
            "grouped": pooled.groups is not None,
            "rows": len(pooled),
            "chosen": {"regularization": chosen.regularization, "standardize": chosen.standardize},
            "mean_auroc": records[best].score,
            "std_auroc": float(np.std(fold_aurocs[best])),
        }
        return _Choice(refit, chosen, records, out_of_fold[best, len(train) :], summary)

    def _fit_class_means(self, train: ActivationDataset, val: ActivationDataset) -> _Choice:
        """The closed-form kinds: one probe from the training split's class statistics."""
        from probe_lab.fit.class_means import class_mean_probe

        weights, details = class_mean_probe(train, self.config.kind, shrinkage=self.config.shrinkage)
        return _Choice(FitResult(weights, details), None, [], weights.decision_function(val))

    def _fit_folds(
        self,
        pooled: ActivationDataset,
        val: ActivationDataset,
        folds: list[tuple[np.ndarray, np.ndarray]],
        regularizations: list[float],
        placement: Placement,
        *,
        standardize: bool,
    ) -> list[list[FitResult]]:
        """Every fold's path: for each (training positions, held-out positions) of `folds`, the
        probes `_fit` trains on the fold's training rows of `pooled` (a backend may fit them together)."""
        results = []
        for number, (fit_rows, held_out_rows) in enumerate(folds):
            log.info("cross-validation fold %d of %d: %d rows fitted", number + 1, len(folds), len(fit_rows))
            fold_train, monitored = self._monitored(pooled, fit_rows, pooled.subset(held_out_rows), placement)
            results.append(self._fit(fold_train, monitored, regularizations, placement, standardize=standardize))
        return results

    def _monitored(
        self, pooled: ActivationDataset, rows: np.ndarray, held_out: ActivationDataset, placement: Placement
    ) -> tuple[ActivationDataset, ActivationDataset]:
        """(rows to fit, rows the fit watches) for a fit of cross-validation on `rows` of `pooled`.

        Full-batch L-BFGS goes to its optimum whatever it watches: it fits every row and watches
        `held_out`. Minibatch AdamW stops early and keeps its best checkpoint by what it watches, which
        must then be none of the rows it is scored on: `validation_split` of `rows` is set aside for it.
        """
        if placement.full_batch:
            return pooled.subset(rows), held_out
        inner = split_dataset(pooled.subset(rows), self.config.validation_split, 0.0, self.config.seed)
        return inner.train, inner.val

    def _check_config(self) -> None:  # noqa: B027 (a hook: most backends accept every setting)
        """Refuse settings this backend cannot honour (one line naming the setting)."""

    @abstractmethod
    def _fit(
        self,
        train: ActivationDataset,
        val: ActivationDataset,
        regularizations: list[float],
        placement: Placement,
        *,
        standardize: bool,
    ) -> list[FitResult]:
        """One probe per regularization value, in the same order (a path of one value is a plain fit),
        on raw or standardized features."""

    # -- using the probe ------------------------------------------------------------------------
    @property
    def coef_(self) -> np.ndarray:
        return self._trained().weight

    @property
    def intercept_(self) -> float:
        return self._trained().bias

    def decision_function(self, X: Activations) -> np.ndarray:
        return self._trained().decision_function(as_dataset(X, None, "X"))

    def predict_proba(self, X: Activations) -> np.ndarray:
        """Probability of class 1 for each row, shape (N,)."""
        return self._trained().predict_proba(as_dataset(X, None, "X"))

    def predict(self, X: Activations, threshold: float = 0.5) -> np.ndarray:
        return (self.predict_proba(X) >= threshold).astype(np.int64)

    def get_backend_type(self) -> str:
        return self.backend

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> None:
        """Save the probe as safetensors (whatever the file's extension) with its config as metadata."""
        save_probe(path, self._trained(), {"backend": self.backend, "config": self.config.to_dict()})

    def load_checkpoint(self, path: str | Path) -> None:
        weights, _ = load_probe(path)
        if weights.input_dim != self.input_dim:
            raise ProbeLabError(f"{path}: probe has {weights.input_dim} dims, the trainer expects {self.input_dim}")
        self.weights = weights

    def _trained(self) -> ProbeWeights:
        if self.weights is None:
            raise ProbeLabError(f"the {self.backend} probe is not trained yet: call fit or load_checkpoint first")
        return self.weights


def as_dataset(X: Activations, y: Any, name: str) -> ActivationDataset:
    if isinstance(X, ActivationDataset):
        return X
    if isinstance(X, (str, Path)):
        raise ProbeLabError(f"{name}: pass an array or a list of tensor file paths, not a single path")
    return ActivationDataset(X, y, name=name)
