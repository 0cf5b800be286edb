"""`ProbeSettings`: what a user chooses about the probe itself (the schema of the `probe` config group).

The objective of both backends is sklearn's L2 (or L1) logistic regression: ½‖w‖² + C·Σ loss with an
unpenalized bias, C = 1 / regularization (probe_lab.fit.objective states it in full).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from probe_lab.errors import ProbeLabError
from probe_lab.settings.checks import require_choice, require_positive


class Penalty(StrEnum):
    l1 = "l1"
    l2 = "l2"


class OptimizerName(StrEnum):
    """`auto` is full-batch L-BFGS wherever the training split lives (`lbfgs`); `adamw` trains on minibatches."""

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


@dataclass
class ProbeSettings:
    """What is minimized and how hard the optimizer tries.

    regularization: L2 (or L1) strength as in the seed; sklearn's C = 1 / regularization. A list of
    values is a regularization path: every value is trained in the same run and the best on
    validation is kept.
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
        self.penalty = require_choice(Penalty, self.penalty, "probe.penalty")
        self.optimizer = require_choice(OptimizerName, self.optimizer, "probe.optimizer")
        self.solver = require_choice(SklearnSolver, self.solver, "probe.solver")
        if isinstance(self.regularization, (list, tuple)):
            if not self.regularization:
                raise ProbeLabError("probe.regularization: an empty list")
            for value in self.regularization:
                require_positive(value, "probe.regularization")
            self.regularization = [float(v) for v in self.regularization]
        else:
            require_positive(self.regularization, "probe.regularization")
        require_positive(self.learning_rate, "probe.learning_rate")
        for name in ("max_iterations", "batch_size", "gradient_accumulation_steps"):
            require_positive(getattr(self, name), f"probe.{name}", integer=True)
        if self.early_stopping_patience < 0:
            raise ProbeLabError(f"probe.early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        if self.penalty is Penalty.l1 and self.solver not in (
            SklearnSolver.auto,
            SklearnSolver.liblinear,
            SklearnSolver.saga,
        ):
            raise ProbeLabError(f"probe.solver={self.solver.value} does not support penalty=l1 (use liblinear or saga)")

    @property
    def regularization_values(self) -> list[float]:
        """The regularization path: one value, or every value of a list."""
        value = self.regularization
        return list(value) if isinstance(value, list) else [float(value)]
