"""Probe training settings shared by both backends, with the seed guide's names.

`ProbeSettings` is what a user chooses about the probe itself (the Hydra `probe` group uses it as its
schema). `ProbeTrainingConfig` adds where and how it runs (device, precision, validation split, seed)
and is what the backends and the Python API take.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from probe_lab.errors import ProbeLabError


class Penalty(StrEnum):
    l1 = "l1"
    l2 = "l2"


class OptimizerName(StrEnum):
    """`auto` picks full-batch L-BFGS when the training split fits in memory, else minibatch AdamW."""

    auto = "auto"
    lbfgs = "lbfgs"
    adamw = "adamw"


class SklearnSolver(StrEnum):
    auto = "auto"
    lbfgs = "lbfgs"
    newton_cholesky = "newton-cholesky"
    liblinear = "liblinear"
    saga = "saga"
    sag = "sag"
    newton_cg = "newton-cg"


PRECISIONS = ("32", "16-mixed", "bf16-mixed")

# newton-cholesky builds and factors the D×D Hessian: the fastest solver while D is moderate and
# n ≥ D (5 iterations where lbfgs needed ~970 on activations with outlier dimensions), but its cost
# grows as D³, so past this width lbfgs is the better choice.
NEWTON_CHOLESKY_MAX_DIM = 2048


@dataclass
class ProbeSettings:
    """What is minimized and how hard the optimizer tries.

    regularization: L2 (or L1) strength as in the seed; sklearn's C = 1 / regularization. A list of
    values is a regularization path: every value is trained in the same run and the best on
    validation is kept.
    The objective of both backends is sklearn's: ½‖w‖² + C·Σ loss, unpenalized bias.
    """

    regularization: Any = 100.0  # a number, or a list of numbers (a path)
    penalty: Penalty = Penalty.l2
    max_iterations: int = 2000
    early_stopping: bool = True
    early_stopping_patience: int = 5
    learning_rate: float = 0.001
    batch_size: int = 8192
    gradient_accumulation_steps: int = 1
    optimizer: OptimizerName = OptimizerName.auto
    solver: SklearnSolver = SklearnSolver.auto
    standardize: bool = False

    def __post_init__(self) -> None:
        self.penalty = _enum(Penalty, self.penalty, "penalty")
        self.optimizer = _enum(OptimizerName, self.optimizer, "optimizer")
        self.solver = _enum(SklearnSolver, self.solver, "solver")
        if isinstance(self.regularization, (list, tuple)):
            if not self.regularization:
                raise ProbeLabError("probe.regularization: an empty list")
            for value in self.regularization:
                _positive(value, "regularization")
            self.regularization = [float(v) for v in self.regularization]
        else:
            _positive(self.regularization, "regularization")
        _positive(self.learning_rate, "learning_rate")
        for name in ("max_iterations", "batch_size", "gradient_accumulation_steps"):
            _positive(getattr(self, name), name, integer=True)
        if self.early_stopping_patience < 0:
            raise ProbeLabError(f"probe.early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        if self.penalty is Penalty.l1 and self.solver not in (
            SklearnSolver.auto,
            SklearnSolver.liblinear,
            SklearnSolver.saga,
        ):
            raise ProbeLabError(f"probe.solver={self.solver.value} does not support penalty=l1 (use liblinear or saga)")


@dataclass
class ProbeTrainingConfig(ProbeSettings):
    """The seed guide's configuration object: probe settings plus where and how training runs.

    `precision` (Lightning's names: "32", "16-mixed", "bf16-mixed") wins over `use_mixed_precision`
    when given; otherwise mixed precision means "16-mixed" on CUDA and "32" on the CPU.

    memory_budget_gb: with `optimizer=auto`, full-batch L-BFGS runs while the training split, held in
    its training dtype, fits in this many GB of the device's memory; larger splits stream minibatches
    with AdamW. None: half of the device's memory (GPU memory on CUDA, available RAM on the CPU).
    num_workers, read_mb, shuffle_reads, prefetch_batches: how minibatches stream from disk
    (reader threads, the size of one contiguous read, reads shuffled together, batches prefetched
    by each thread).
    """

    validation_split: float = 0.2
    use_mixed_precision: bool = True
    device: str = "cuda"
    precision: str | None = None
    seed: int = 42
    memory_budget_gb: float | None = None
    num_workers: int = 0
    read_mb: float = 16.0
    shuffle_reads: int = 4
    prefetch_batches: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.validation_split < 1.0:
            raise ProbeLabError(f"validation_split must be in (0, 1), got {self.validation_split}")
        if self.memory_budget_gb is not None:
            _positive(self.memory_budget_gb, "memory_budget_gb", prefix="")
        _positive(self.read_mb, "read_mb", prefix="")
        for name in ("shuffle_reads", "prefetch_batches"):
            _positive(getattr(self, name), name, integer=True, prefix="")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ProbeLabError(f"num_workers must be a non-negative integer, got {self.num_workers!r}")
        if self.precision is not None and str(self.precision) not in PRECISIONS:
            raise ProbeLabError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision is not None:
            self.precision = str(self.precision)

    @property
    def regularization_values(self) -> list[float]:
        """The regularization path: one value, or every value of a list."""
        value = self.regularization
        return list(value) if isinstance(value, list) else [float(value)]

    def with_regularization(self, value: float) -> ProbeTrainingConfig:
        """This config with one regularization value."""
        return dataclasses.replace(self, regularization=float(value))

    def to_sklearn_params(self, n_samples: int | None = None, n_features: int | None = None) -> dict[str, Any]:
        """Keyword arguments for `sklearn.linear_model.LogisticRegression`.

        The seed's `penalty=` is translated into `l1_ratio` (scikit-learn 1.8 deprecated `penalty`).
        With `solver=auto` the solver suits the problem's shape when it is given: newton-cholesky for
        L2 when n_samples >= n_features and the width is moderate, else lbfgs; liblinear for L1.
        """
        if isinstance(self.regularization, list):
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

    def resolved_precision(self, device: str) -> str:
        if self.precision is not None:
            return self.precision
        return "16-mixed" if self.use_mixed_precision and device.startswith("cuda") else "32"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (enums as their strings)."""
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
    return value.value if isinstance(value, Enum) else value


def _enum(enum_type: type[Enum], value: Any, name: str) -> Any:
    try:
        return enum_type(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in enum_type)
        raise ProbeLabError(f"probe.{name} must be one of {choices}, got {value!r}") from None


def _positive(value: Any, name: str, *, integer: bool = False, prefix: str = "probe.") -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise ProbeLabError(f"{prefix}{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
