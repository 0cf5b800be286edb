"""The scikit-learn backend: LogisticRegression on the whole training split in memory.

Callback-free and Lightning-free. The estimator's parameters come from
`ProbeTrainingConfig.to_sklearn_params` (solver picked for the problem's shape); a regularization
path loops over its values with warm starts. Features are
centred on the training mean before fitting: with an unpenalized intercept this leaves the optimum
unchanged, while activations whose mean is far from zero would otherwise stall lbfgs and make
newton-cholesky's Hessian too ill-conditioned to factor. With `standardize=true` the features are
also scaled to unit variance (another penalty geometry). Weights are mapped back to raw space.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from scipy.linalg import LinAlgWarning
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from probe_lab.backends.base import FitResult, ProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.stats import device_moments
from probe_lab.probe import ProbeWeights
from probe_lab.settings.placement import Placement

log = logging.getLogger(__name__)


class SklearnProbeTrainer(ProbeTrainer):
    backend = "sklearn"

    def _fit(
        self,
        train: ActivationDataset,
        val: ActivationDataset,
        regularizations: list[float],
        placement: Placement,
        *,
        standardize: bool,
    ) -> list[FitResult]:
        """In host memory whatever `placement` says: scikit-learn fits numpy arrays."""
        params = self.config.with_regularization(regularizations[0]).to_sklearn_params(
            n_samples=len(train), n_features=train.dim
        )
        x = train.materialize()  # read once: statistics and every fit of the path use it
        mean, std = (moment.numpy() for moment in device_moments(torch.from_numpy(x)))
        # liblinear penalizes the intercept, so centring would change its optimum: leave its input raw.
        center = np.zeros_like(mean) if params["solver"] == "liblinear" else mean
        scale = np.where(std > 0, std, 1.0) if standardize else np.ones_like(std)
        # float64: in float32 the D×D Hessian of outlier-laden activations can be too ill-conditioned
        # to factor, and newton-cholesky would fall back to lbfgs.
        dtype = np.float64 if params["solver"] == "newton-cholesky" else np.float32
        features = ((x - center) / scale).astype(dtype)
        del x

        # A path runs from the strongest penalty to the weakest, each fit starting where the last ended.
        model = LogisticRegression(**params, warm_start=len(regularizations) > 1)
        results: dict[int, FitResult] = {}
        for index in sorted(range(len(regularizations)), key=lambda i: -regularizations[i]):
            model.set_params(C=1.0 / regularizations[index])
            converged = self._fit_quietly(model, features, train.labels, params["solver"])
            weight = model.coef_[0].astype(np.float64) / scale
            bias = float(model.intercept_[0]) - float(weight @ center)
            results[index] = FitResult(
                ProbeWeights(weight.astype(np.float32), bias),
                {"solver": params["solver"], "iterations": int(np.max(model.n_iter_)), "converged": converged},
            )
        return [results[i] for i in range(len(regularizations))]

    @staticmethod
    def _fit_quietly(model: LogisticRegression, features: np.ndarray, labels: np.ndarray, solver: str) -> bool:
        """Fit; convergence warnings become the returned flag (and a log line), others pass through."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(features, labels)
        converged = True
        for warning in caught:
            if issubclass(warning.category, (ConvergenceWarning, LinAlgWarning)):
                converged = False
                log.warning("sklearn %s: %s", solver, str(warning.message).splitlines()[0])
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return converged
