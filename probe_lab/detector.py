"""`ProbeDetector`: the seed guide's asynchronous sklearn entry point, kept for its snippets.

The seed trained probes inside an async evaluation pipeline, so its API awaits `fit_from_arrays`.
Training here is synchronous; the coroutine simply runs it, so `await detector.fit_from_arrays(...)`
works unchanged inside async code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from probe_lab.backends.sklearn import SklearnProbeTrainer
from probe_lab.settings import ProbeTrainingConfig


@dataclass
class Probe:
    """A trained probe as the seed's detector returned it."""

    layer: int | None
    auc_score: float
    coef: np.ndarray
    intercept: float
    trainer: SklearnProbeTrainer


class ProbeDetector:
    """Trains sklearn probes on activation arrays; `model` is accepted for the seed's signature."""

    def __init__(self, model: Any = None, config: ProbeTrainingConfig | None = None) -> None:
        self.model = model
        self.config = config or ProbeTrainingConfig(device="cpu")
        self.probes: dict[int | None, Probe] = {}

    async def fit_from_arrays(
        self,
        X_train: np.ndarray,
        y_train: np.ndarray,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        layer: int | None = None,
    ) -> Probe:
        trainer = SklearnProbeTrainer(int(np.asarray(X_train).shape[-1]), self.config)
        auc = trainer.fit(X_train, y_train, X_val, y_val)
        probe = Probe(layer, auc, trainer.coef_, trainer.intercept_, trainer)
        self.probes[layer] = probe
        return probe
