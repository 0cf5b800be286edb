"""`ProbeSettings`: what a user chooses about the probe itself (the schema of the `probe` config group).

The objective of both backends is sklearn's L2 (or L1) logistic regression: ½‖w‖² + C·Σ loss with an
unpenalized bias, C = 1 / regularization (probe_lab.fit.objective states it in full). The other kinds
(`mean_difference`, `lda`) are computed in closed form from class statistics (probe_lab.fit.class_means).
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


class ProbeKind(StrEnum):
    """logistic: the L2 (L1) logistic regression; mean_difference: w = μ₁ − μ₀ ("mass-mean");
    lda: Σ⁻¹(μ₁ − μ₀) with a shrunk within-class covariance. Every kind exports the same probe file."""

    logistic = "logistic"
    mean_difference = "mean_difference"
    lda = "lda"


AUTO = "auto"
# probe.regularization=auto: 10⁻³ … 10⁴ in half-decade steps (15 values), strongest penalty last.
AUTO_REGULARIZATION = tuple(10.0 ** (k / 2) for k in range(-6, 9))


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
    validation (or, with `cv_folds`, on the mean fold AUROC) is kept; `auto` is the path
    `AUTO_REGULARIZATION`. standardize: true, false, or `auto` (both tried, chosen the same way).
    cv_folds: 0 chooses on the validation split; K ≥ 2 by stratified K-fold cross-validation over the
    training and validation rows (whole samples kept together), the choice then refit on all of them.
    kind: see `ProbeKind`. shrinkage: LDA's covariance shrinkage, `auto` (Ledoit-Wolf) or in [0, 1].
    """

    regularization: Any = 100.0  # a number, a list of numbers (a path), or auto
    penalty: Penalty = Penalty.l2
    max_iterations: int = 2000
    early_stopping: bool = True
    early_stopping_patience: int = 5
    learning_rate: float = 0.001
    batch_size: int = 8192
    gradient_accumulation_steps: int = 1
    optimizer: OptimizerName = OptimizerName.auto
    solver: SklearnSolver = SklearnSolver.auto
    standardize: Any = False  # true, false or auto
    cv_folds: int = 0
    kind: ProbeKind = ProbeKind.logistic
    shrinkage: Any = AUTO  # lda: auto (Ledoit-Wolf) or a number in [0, 1]

    def __post_init__(self) -> None:
        self.kind = require_choice(ProbeKind, self.kind, "probe.kind")
        self.penalty = require_choice(Penalty, self.penalty, "probe.penalty")
        self.optimizer = require_choice(OptimizerName, self.optimizer, "probe.optimizer")
        self.solver = require_choice(SklearnSolver, self.solver, "probe.solver")
        if self.regularization == AUTO:
            pass
        elif isinstance(self.regularization, (list, tuple)):
            if not self.regularization:
                raise ProbeLabError("probe.regularization: an empty list")
            for value in self.regularization:
                require_positive(value, "probe.regularization")
            self.regularization = [float(v) for v in self.regularization]
        else:
            require_positive(self.regularization, "probe.regularization")
        if self.standardize != AUTO and not isinstance(self.standardize, bool):
            raise ProbeLabError(f"probe.standardize must be true, false or auto, got {self.standardize!r}")
        if (
            isinstance(self.cv_folds, bool)
            or not isinstance(self.cv_folds, int)
            or self.cv_folds in (1,)
            or self.cv_folds < 0
        ):
            raise ProbeLabError(
                f"probe.cv_folds must be 0 (choose on the validation split) or >= 2, got {self.cv_folds!r}"
            )
        if self.shrinkage != AUTO and (
            isinstance(self.shrinkage, bool)
            or not isinstance(self.shrinkage, (int, float))
            or not 0.0 <= self.shrinkage <= 1.0
        ):
            raise ProbeLabError(f"probe.shrinkage must be auto or a number in [0, 1], got {self.shrinkage!r}")
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
        """The regularization path: one value, every value of a list, or `AUTO_REGULARIZATION`."""
        value = self.regularization
        if value == AUTO:
            return list(AUTO_REGULARIZATION)
        return list(value) if isinstance(value, list) else [float(value)]

    @property
    def standardize_values(self) -> list[bool]:
        """The feature scalings to try: the one asked for, or both with standardize=auto (raw first)."""
        return [False, True] if self.standardize == AUTO else [bool(self.standardize)]

    @property
    def chooses(self) -> bool:
        """Whether several logistic probes are fitted and one is chosen (a path, or standardize=auto)."""
        return len(self.regularization_values) * len(self.standardize_values) > 1
