"""The scikit-learn backend: LogisticRegression on the whole training split in memory.

Callback-free and Lightning-free. The estimator's parameters come from
`ProbeTrainingConfig.to_sklearn_params` (solver picked for the problem's shape); with
`standardize=true` it fits on standardized features and maps the weights back to raw space.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from probe_lab.backends.base import FitResult, ProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.probe import ProbeWeights

log = logging.getLogger(__name__)


class SklearnProbeTrainer(ProbeTrainer):
    backend = "sklearn"

    def _fit(self, train: ActivationDataset, val: ActivationDataset) -> FitResult:
        x = train.materialize()
        params = self.config.to_sklearn_params(n_samples=x.shape[0], n_features=x.shape[1])
        if params["solver"] == "newton-cholesky":
            # In float32 the D×D Hessian of activations with outlier dimensions is too ill-conditioned
            # to factor: sklearn then falls back to lbfgs (150+ iterations instead of 4).
            x = x.astype(np.float64)
        scaler = StandardScaler().fit(x) if self.config.standardize else None
        features = scaler.transform(x) if scaler is not None else x
        model = LogisticRegression(**params)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(features, train.labels)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        if not converged:
            log.warning(
                "sklearn %s did not converge in probe.max_iterations=%d iterations",
                params["solver"],
                params["max_iter"],
            )
        weight = model.coef_[0].astype(np.float64)
        bias = float(model.intercept_[0])
        if scaler is not None:
            weight = weight / scaler.scale_
            bias -= float(weight @ scaler.mean_)
        return FitResult(
            ProbeWeights(weight.astype(np.float32), bias),
            {"solver": params["solver"], "iterations": int(np.max(model.n_iter_)), "converged": converged},
        )
