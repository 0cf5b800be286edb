"""Choosing among logistic probes: which regularization and feature scaling, on what evidence.

The candidates are every (standardize, regularization) pair the settings ask for
(`ProbeSettings.standardize_values` × `regularization_values`). They are scored on the validation split
(`probe.cv_folds=0`), or by stratified K-fold cross-validation over the training and validation rows
together (`cross_validation_folds`): the candidate with the best mean fold AUROC wins, the first of
equals in the order the candidates were given — the rule of scikit-learn's `LogisticRegressionCV`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from probe_lab.data.dataset import ActivationDataset
from probe_lab.errors import ProbeLabError


@dataclass(frozen=True)
class Candidate:
    """One logistic probe the settings ask for."""

    regularization: float
    standardize: bool


def candidates(regularizations: list[float], standardize_values: list[bool]) -> list[Candidate]:
    """Every pair, grouped by feature scaling (a backend fits one scaling's whole path in one pass)."""
    return [Candidate(value, scaling) for scaling in standardize_values for value in regularizations]


def best_candidate(scores: np.ndarray) -> int:
    """Index of the highest score, the first of equals (scores: one per candidate)."""
    return int(np.argmax(scores))


def cross_validation_folds(pooled: ActivationDataset, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training positions, held-out positions) of each of `folds` stratified folds of `pooled`.

    Rows are shuffled with `seed` (scikit-learn's `StratifiedKFold(folds, shuffle=True,
    random_state=seed)`); rows that come several to a sample (`pooled.groups`) are kept together with
    `StratifiedGroupKFold`, so no sample is trained on and scored in the same fold. Every fold's two
    sides must hold both classes.
    """
    labels = pooled.labels
    if labels is None:
        raise ProbeLabError(f"{pooled.name}: labels are needed for cross-validation")
    unit = "rows" if pooled.groups is None else "samples"
    smallest = int(np.bincount(_unit_labels(labels, pooled.groups)).min())
    if smallest < folds:
        raise ProbeLabError(
            f"probe.cv_folds={folds}: the training and validation splits hold only {smallest} {unit} of one "
            "class; use fewer folds"
        )
    if pooled.groups is None:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = list(splitter.split(np.zeros(len(labels)), labels))
    else:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = list(splitter.split(np.zeros(len(labels)), labels, pooled.groups))
    for number, (train, held_out) in enumerate(parts, 1):
        for side, rows in (("training", train), ("held-out", held_out)):
            if len(np.unique(labels[rows])) < 2:
                raise ProbeLabError(
                    f"probe.cv_folds={folds}: fold {number}'s {side} part holds one class only; use fewer folds"
                )
    return parts


def _unit_labels(labels: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """One label per row, or per sample when rows come several to a sample."""
    if groups is None:
        return labels
    _, first = np.unique(groups, return_index=True)
    return labels[first]


@dataclass(frozen=True)
class CandidateRecord:
    """What metrics.json's regularization path records of one candidate."""

    candidate: Candidate
    val_auroc: float | None = None  # chosen on the validation split
    fold_aurocs: tuple[float, ...] = ()  # chosen by cross-validation

    @property
    def score(self) -> float:
        """The number candidates are ranked by: validation AUROC, or mean fold AUROC."""
        return float(np.mean(self.fold_aurocs)) if self.fold_aurocs else float(self.val_auroc)  # type: ignore[arg-type]

    def to_dict(self, with_scaling: bool) -> dict[str, float | bool | list[float]]:
        point: dict[str, float | bool | list[float]] = {"regularization": self.candidate.regularization}
        if with_scaling:
            point["standardize"] = self.candidate.standardize
        if self.fold_aurocs:
            point |= {
                "cv_auroc_mean": self.score,
                "cv_auroc_std": float(np.std(self.fold_aurocs)),
                "fold_aurocs": list(self.fold_aurocs),
            }
        else:
            point["val_auroc"] = self.score
        return point
