"""The seed guide's Python entry points: pick a trainer by model size, or force one."""

from __future__ import annotations

from typing import ClassVar

from probe_lab.backends import backend_class
from probe_lab.backends.base import ProbeTrainer
from probe_lab.errors import ProbeLabError
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.settings.backend import BACKEND_NAMES, resolve_backend


class ProbeTrainerFactory:
    """Builds the trainer for a model size. `SKLEARN_THRESHOLD_B` is the size cut-off in billions."""

    SKLEARN_THRESHOLD_B: ClassVar[float] = 34.0

    @classmethod
    def create(
        cls,
        model_size_b: float,
        input_dim: int,
        config: ProbeTrainingConfig | None = None,
        force_backend: str | None = None,
    ) -> ProbeTrainer:
        requested = force_backend or "auto"
        if requested not in ("auto", *BACKEND_NAMES):
            raise ProbeLabError(f"force_backend must be one of {', '.join(BACKEND_NAMES)}, got {force_backend!r}")
        choice = resolve_backend(requested, model_size_b, cls.SKLEARN_THRESHOLD_B)
        return backend_class(choice.name)(input_dim, config)


def create_probe_trainer(
    model_size_b: float,
    input_dim: int,
    config: ProbeTrainingConfig | None = None,
    force_backend: str | None = None,
) -> ProbeTrainer:
    """sklearn below 34B parameters, pytorch at or above, unless `force_backend` names one."""
    return ProbeTrainerFactory.create(model_size_b, input_dim, config, force_backend)
