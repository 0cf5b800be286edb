"""`ProbeTrainingConfig`: the seed guide's configuration object, what the backends and the Python API take.

It is the probe's settings (`ProbeSettings`) plus where and how training runs. Where the data lives,
on which device and in which Lightning precision is not decided here but once per fit, from this
config and the data's size, by `probe_lab.settings.placement.decide_placement`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from probe_lab.errors import ProbeLabError
from probe_lab.settings.checks import require_positive
from probe_lab.settings.data import StreamingSettings
from probe_lab.settings.parallel import DEFAULT_COLLECTIVE_TIMEOUT_S
from probe_lab.settings.probe import Penalty, ProbeSettings, SklearnSolver

PRECISIONS = ("32", "16-mixed", "bf16-mixed")

# newton-cholesky builds and factors the D×D Hessian: the fastest solver while D is moderate and
# n ≥ D, but its cost grows as D³, so past this width lbfgs is the better choice.
NEWTON_CHOLESKY_MAX_DIM = 2048


@dataclass
class ProbeTrainingConfig(ProbeSettings):
    """The probe settings plus the run's: validation split, device, precision, seed, memory budget.

    device: "cuda" (the default; the CPU when no GPU is present), "cuda:K" or "cpu".
    precision: Lightning's name ("32", "16-mixed", "bf16-mixed"); it wins over `use_mixed_precision`
    when given, otherwise mixed precision means "16-mixed" on CUDA and "32" on the CPU.
    memory_budget_gb: full-batch L-BFGS holds the training split on the device while it fits in this
    many GB of its memory, in its stored dtype; larger splits are read block by block at every
    evaluation (from pinned host memory or from storage). None: half of the device's memory (GPU
    memory on CUDA, available RAM on the CPU).
    host_budget_gb: on a GPU, the pinned host memory a split beyond `memory_budget_gb` may be held in
    (None: half the available RAM; 0: none, it is read from storage at every evaluation).
    streaming: how minibatches stream (reader threads, read size, shuffling, prefetch).
    collective_timeout_s: in a data-parallel fit, how long a process waits for the others before it
    stops with an error.
    """

    validation_split: float = 0.2
    use_mixed_precision: bool = True
    device: str = "cuda"
    precision: str | None = None
    seed: int = 42
    memory_budget_gb: float | None = None
    host_budget_gb: float | None = None
    streaming: StreamingSettings = field(default_factory=StreamingSettings)
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.validation_split < 1.0:
            raise ProbeLabError(f"validation_split must be in (0, 1), got {self.validation_split}")
        if self.memory_budget_gb is not None:
            require_positive(self.memory_budget_gb, "memory_budget_gb")
        if self.host_budget_gb is not None and not self.host_budget_gb >= 0:
            raise ProbeLabError(f"host_budget_gb must be >= 0, got {self.host_budget_gb}")
        require_positive(self.collective_timeout_s, "collective_timeout_s")
        if self.precision is not None:
            self.precision = str(self.precision)
            if self.precision not in PRECISIONS:
                raise ProbeLabError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.streaming, dict):
            self.streaming = StreamingSettings(**self.streaming)

    def with_regularization(self, value: float) -> ProbeTrainingConfig:
        """This config with one regularization value."""
        return dataclasses.replace(self, regularization=float(value))

    def to_sklearn_params(self, n_samples: int | None = None, n_features: int | None = None) -> dict[str, Any]:
        """Keyword arguments for `sklearn.linear_model.LogisticRegression`.

        The seed's `penalty=` is translated into `l1_ratio` (scikit-learn 1.8 deprecated `penalty`).
        With `solver=auto` the solver suits the problem's shape when it is given: newton-cholesky for
        L2 when n_samples >= n_features and the width is moderate, else lbfgs; liblinear for L1.
        """
        if isinstance(self.regularization, (list, str)):
            raise ProbeLabError("to_sklearn_params needs one regularization value (see with_regularization)")
        return {
            "C": 1.0 / self.regularization,
            "l1_ratio": 1.0 if self.penalty is Penalty.l1 else 0.0,
            "max_iter": self.max_iterations,
            "random_state": self.seed,
            "solver": self.sklearn_solver(n_samples, n_features),
        }

    def sklearn_solver(self, n_samples: int | None = None, n_features: int | None = None) -> str:
        if self.solver is not SklearnSolver.auto:
            return self.solver.value
        if self.penalty is Penalty.l1:
            return SklearnSolver.liblinear.value
        shape_known = n_samples is not None and n_features is not None
        if shape_known and n_features <= NEWTON_CHOLESKY_MAX_DIM and n_samples >= n_features:
            return SklearnSolver.newton_cholesky.value
        return SklearnSolver.lbfgs.value

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (enums as their strings, `streaming` as a dict)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProbeTrainingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ProbeLabError(f"ProbeTrainingConfig has no field(s) {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_settings(cls, settings: ProbeSettings, **run_fields: Any) -> ProbeTrainingConfig:
        values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(ProbeSettings)}
        return cls(**values, **run_fields)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
