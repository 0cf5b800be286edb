"""`ProbeClassifier`: a linear probe as a scikit-learn estimator (pipelines, cross-validation, grid search).

`fit` builds a `ProbeTrainingConfig` from the estimator's parameters and trains with the trainer
`create_probe_trainer` picks (sklearn below 34B parameters, pytorch at or above, unless `backend`
names one). Prediction is the trained probe's linear function evaluated in float64 with numpy.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from probe_lab.api import create_probe_trainer
from probe_lab.errors import ProbeLabError
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.settings.probe import ProbeKind

__all__ = ["ProbeClassifier"]

FLOAT_DTYPES = (np.float64, np.float32)


class ProbeClassifier(ClassifierMixin, BaseEstimator):
    """Binary linear probe on activations, trained by a probe_lab backend.

    Parameters are stored as given and checked by `fit` (an invalid one raises ValueError there);
    they mean what the `ProbeTrainingConfig` fields of the same names mean.

    regularization: L2 (or L1) strength, sklearn's C = 1 / regularization; a list of values or "auto"
        (a regularization path) makes `fit` choose one, on a held-out validation split
        (`validation_split` of the rows, stratified, seeded) or, with `cv_folds` >= 2, by stratified
        K-fold cross-validation followed by a refit on all rows.
    kind: "logistic", "mean_difference" or "lda" (the last two in closed form from class statistics).
    standardize: True, False or "auto" (both tried and one chosen, as for a regularization path).
    cv_folds: 0 (choose on the validation split) or K >= 2.
    shrinkage: LDA's covariance shrinkage, "auto" (Ledoit-Wolf) or a number in [0, 1].
    penalty: "l2" or "l1" (l1 with the sklearn backend only).
    max_iterations: the optimizer's iteration limit.
    backend: "auto" (chosen from `model_size_b`), "sklearn" or "pytorch".
    model_size_b: size in billions of parameters of the model the activations come from.
    device, precision: where and in which Lightning precision the pytorch backend trains.
    validation_split: the fraction of rows the trainer holds out to choose on (with cv_folds >= 2, pooled
        back for the folds).
    seed: seeds the validation split, the folds and the solvers.

    The probe is trained on every row given to `fit`, except when a logistic probe's value is chosen
    on a validation split (a path or standardize="auto" with cv_folds=0): then on the other rows.
    With cv_folds >= 2 the trainer pools its training and validation splits for the folds and the
    refit, so every row is used there too.

    Fitted attributes: `classes_` (the two sorted labels; `classes_[1]` is the positive class),
    `coef_` (1, n_features) float64, `intercept_` (1,) float64, `n_features_in_`,
    `feature_names_in_` (when X has string column names), `regularization_` (the value trained
    with, the chosen one for a path; None for the closed-form kinds) and `backend_` ("sklearn" or
    "pytorch").
    """

    def __init__(
        self,
        regularization: float | list[float] | str = 100.0,
        *,
        kind: str = "logistic",
        standardize: bool | str = False,
        cv_folds: int = 0,
        shrinkage: float | str = "auto",
        penalty: str = "l2",
        max_iterations: int = 2000,
        backend: str = "auto",
        model_size_b: float = 7.0,
        device: str = "cpu",
        precision: str | None = None,
        validation_split: float = 0.2,
        seed: int = 42,
    ) -> None:
        self.regularization = regularization
        self.kind = kind
        self.standardize = standardize
        self.cv_folds = cv_folds
        self.shrinkage = shrinkage
        self.penalty = penalty
        self.max_iterations = max_iterations
        self.backend = backend
        self.model_size_b = model_size_b
        self.device = device
        self.precision = precision
        self.validation_split = validation_split
        self.seed = seed

    def fit(self, X: Any, y: Any) -> ProbeClassifier:
        """Train the probe on X (n_samples, n_features) and binary labels y of any label type.

        Raises ValueError for non-finite or empty X, y of other than two classes, invalid parameters,
        and data the trainer cannot use (e.g. too few rows of a class for the validation split).
        Warns with ConvergenceWarning when the solver reports that it did not converge.
        """
        X, y = validate_data(self, X, y, dtype=FLOAT_DTYPES)
        check_classification_targets(y)
        target_type = type_of_target(y, input_name="y", raise_unknown=True)
        if target_type != "binary":
            raise ValueError(f"Only binary classification is supported. The type of the target is {target_type}.")
        classes, labels = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of 2 classes, but y holds only one class: {classes[0]!r}"
            )
        try:
            config = self._training_config()
            force = None if self.backend == "auto" else self.backend
            trainer = create_probe_trainer(self.model_size_b, X.shape[1], config, force_backend=force)
            if config.kind is ProbeKind.logistic and (config.chooses or config.cv_folds >= 2):
                trainer.fit(X, labels)
            else:
                trainer.fit(X, labels, X, labels)
        except ProbeLabError as err:
            raise ValueError(str(err)) from err
        weights = trainer.weights
        if weights is None:
            raise RuntimeError(f"the {trainer.backend} trainer returned no probe (a data-parallel worker process)")
        if trainer.fit_details.get("converged") is False:
            warnings.warn(
                f"the {trainer.backend} solver did not converge in max_iterations={self.max_iterations}; "
                "raise max_iterations or regularization",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.classes_ = classes
        self.coef_ = np.asarray(weights.weight, dtype=np.float64).reshape(1, -1)
        self.intercept_ = np.array([weights.bias], dtype=np.float64)
        self.regularization_ = trainer.regularization
        self.backend_ = trainer.backend
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits w·x + b, shape (n_samples,); positive values favour `classes_[1]`."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=FLOAT_DTYPES)
        return np.asarray(X, dtype=np.float64) @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of `classes_[0]` and `classes_[1]`, shape (n_samples, 2)."""
        logits = self.decision_function(X)
        return np.column_stack([expit(-logits), expit(logits)])

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log-probabilities of `classes_[0]` and `classes_[1]`, shape (n_samples, 2), without underflow."""
        logits = self.decision_function(X)
        return np.column_stack([-np.logaddexp(0.0, logits), -np.logaddexp(0.0, -logits)])

    def predict(self, X: Any) -> np.ndarray:
        """`classes_[1]` where the decision function is >= 0, else `classes_[0]`."""
        positive = self.decision_function(X) >= 0
        return self.classes_[positive.astype(np.intp)]

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags

    def _training_config(self) -> ProbeTrainingConfig:
        regularization = self.regularization
        if isinstance(regularization, (np.ndarray, tuple)):
            regularization = np.asarray(regularization).tolist()
        return ProbeTrainingConfig(
            regularization=regularization,
            kind=self.kind,
            standardize=self.standardize,
            cv_folds=self.cv_folds,
            shrinkage=self.shrinkage,
            penalty=self.penalty,
            max_iterations=self.max_iterations,
            device=self.device,
            precision=self.precision,
            validation_split=self.validation_split,
            seed=self.seed,
        )
