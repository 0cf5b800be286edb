"""Helpers the backend tests share: fitting a backend on the CPU, and comparing weight vectors."""

from __future__ import annotations

import numpy as np

from probe_lab.backends.base import ProbeTrainer
from probe_lab.data.splits import Splits
from probe_lab.settings import ProbeTrainingConfig


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def fit_on_cpu(trainer_class: type[ProbeTrainer], splits: Splits, **config) -> ProbeTrainer:
    """A `trainer_class` probe trained on the CPU on splits.train, validated on splits.val."""
    trainer = trainer_class(splits.train.dim, ProbeTrainingConfig(device="cpu", **config))
    trainer.fit_datasets(splits.train, splits.val)
    return trainer
