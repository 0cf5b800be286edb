"""Train / validation / test splits by index, stratified by label and fixed by the seed.

A dataset whose rows come several to a sample (`ActivationDataset.groups`: every token of a text) is
split by sample: no sample's rows on two sides of a split, the fractions counting samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probe_lab.data.dataset import ActivationDataset
from probe_lab.errors import ProbeLabError
from probe_lab.settings.data import check_split_fractions


@dataclass(frozen=True)
class Splits:
    train: ActivationDataset
    val: ActivationDataset
    test: ActivationDataset | None


def split_dataset(dataset: ActivationDataset, validation_split: float, test_split: float, seed: int) -> Splits:
    """Stratified index splits; every part must be non-empty and hold both classes.

    test_split may be 0 (no test part: the Python API's fit with no validation set uses this).
    """
    if dataset.labels is None:
        raise ProbeLabError(f"{dataset.name}: labels are needed to train a probe")
    check_split_fractions(validation_split, test_split)
    if dataset.groups is None:
        train, val, test = _split_indices(dataset.labels, validation_split, test_split, seed, dataset.name, "rows")
    else:
        _, first, row_sample = np.unique(dataset.groups, return_index=True, return_inverse=True)
        labels = dataset.labels[first]
        mixed = np.flatnonzero(labels[row_sample] != dataset.labels)
        if len(mixed):
            raise ProbeLabError(f"{dataset.name}: sample {int(dataset.groups[mixed[0]])} has rows of both labels")
        parts = _split_indices(labels, validation_split, test_split, seed, dataset.name, "samples")
        train, val, test = (np.flatnonzero(np.isin(row_sample, part)) for part in parts)
    return Splits(
        train=dataset.subset(np.sort(train)),
        val=dataset.subset(np.sort(val)),
        test=dataset.subset(np.sort(test)) if len(test) else None,
    )


def _split_indices(
    labels: np.ndarray, validation_split: float, test_split: float, seed: int, name: str, unit: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) positions into `labels` (one per row, or per sample), stratified."""
    n = len(labels)
    n_val, n_test = round(n * validation_split), round(n * test_split)
    if n_val < 2 or (test_split > 0 and n_test < 2) or n - n_val - n_test < 2:
        raise ProbeLabError(
            f"{name}: {n} {unit} are too few for data.validation_split={validation_split} and "
            f"data.test_split={test_split} (a split would be empty)"
        )
    _require_both_classes(labels, f"{name} (all {unit})")
    # sklearn's import (about a second) waits until rows are split: a run refused earlier skips it
    from sklearn.model_selection import train_test_split

    indices = np.arange(n)
    try:
        rest, test = (
            (indices, np.array([], dtype=int))
            if n_test == 0
            else train_test_split(indices, test_size=n_test, random_state=seed, stratify=labels)
        )
        train, val = train_test_split(rest, test_size=n_val, random_state=seed + 1, stratify=labels[rest])
    except ValueError as err:
        raise ProbeLabError(f"{name}: cannot split by label ({str(err).splitlines()[0]})") from None
    parts = {"training": train, "validation": val} | ({"test": test} if n_test else {})
    for part, rows in parts.items():
        _require_both_classes(labels[rows], f"{name} ({part} split)")
    return train, val, test


def _require_both_classes(labels: np.ndarray, where: str) -> None:
    present = np.unique(labels)
    if len(present) < 2:
        raise ProbeLabError(f"{where}: only class {int(present[0])} present; a probe needs both 0 and 1")


def hold_splits(splits: Splits, device: torch.device) -> Splits:
    """Each split held on `device` as a tensor of its own, read once (splits of data already there are
    copied out of it, so the whole can be freed): training, validation and scoring then stay there."""
    test = splits.test.on_device(device) if splits.test is not None else None
    return Splits(splits.train.on_device(device), splits.val.on_device(device), test)
