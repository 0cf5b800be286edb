"""`ProbeClassifier` passes scikit-learn's estimator checks and works in pipelines, CV and grid search."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import probe_lab
from probe_lab.data.synthetic import activation_like
from probe_lab.estimator import ProbeClassifier

# Checks that fail, by name, with the reason; `xfail_strict` makes a listed check that passes an error.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def separable(n: int = 300, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian classes 6σ apart along a random direction, around a mean far from zero."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, dim)) + np.outer(6.0 * y - 3.0, direction) + 5.0
    return x, y


@parametrize_with_checks(
    [ProbeClassifier(backend="sklearn"), ProbeClassifier(kind="lda"), ProbeClassifier(kind="mean_difference")],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
    xfail_strict=True,
)
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


def test_pipeline_with_a_scaler_fits_and_scores() -> None:
    x, y = separable()
    pipeline = make_pipeline(StandardScaler(), ProbeClassifier()).fit(x, y)
    assert pipeline.score(x, y) >= 0.95
    assert pipeline.predict_proba(x).shape == (len(x), 2)


def test_cross_val_score_gives_one_finite_auroc_per_fold() -> None:
    x, y = separable()
    scores = cross_val_score(ProbeClassifier(), x, y, cv=3, scoring="roc_auc")
    assert scores.shape == (3,) and np.isfinite(scores).all() and (scores >= 0.9).all()


def test_grid_search_picks_a_regularization_and_refits() -> None:
    x, y = separable()
    grid = [0.1, 10.0, 1000.0]
    search = GridSearchCV(ProbeClassifier(), {"regularization": grid}, cv=3, scoring="roc_auc").fit(x, y)
    best = search.best_params_["regularization"]
    assert best in grid
    assert search.best_estimator_.regularization_ == best
    assert search.best_estimator_.coef_.shape == (1, x.shape[1])
    assert search.score(x, y) >= 0.9


@pytest.mark.parametrize("names", [("no", "yes"), (-1, 1), (False, True)], ids=["strings", "plus-minus-one", "bools"])
def test_any_two_labels_round_trip_through_predict(names) -> None:
    x, y = separable()
    labels = np.asarray(names)[y]
    named = ProbeClassifier().fit(x, labels)
    plain = ProbeClassifier().fit(x, y)
    assert list(named.classes_) == sorted(names)
    np.testing.assert_array_equal(named.predict(x), np.asarray(names)[plain.predict(x)])
    np.testing.assert_allclose(named.coef_, plain.coef_)
    assert named.score(x, labels) >= 0.95


def test_decision_function_probabilities_and_log_probabilities_agree() -> None:
    x, y = separable()
    probe = ProbeClassifier(regularization=0.01).fit(x, y)
    logits = probe.decision_function(x)
    assert logits.shape == (len(x),) and logits.dtype == np.float64
    np.testing.assert_allclose(logits, x @ probe.coef_[0] + probe.intercept_[0])
    proba = probe.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(probe.predict_log_proba(x), np.log(proba), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(probe.predict(x), (logits >= 0).astype(int))


@pytest.mark.parametrize("regularization", [1.0, 100.0])
def test_weights_equal_sklearn_logistic_regression(regularization: float) -> None:
    x, y = activation_like(600, 32, seed=1, dtype=np.float64)
    probe = ProbeClassifier(regularization).fit(x, y)
    reference = LogisticRegression(C=1.0 / regularization, max_iter=10_000, tol=1e-10).fit(x, y)
    assert probe.coef_.shape == (1, 32) and probe.coef_.dtype == np.float64
    assert probe.intercept_.shape == (1,) and probe.intercept_.dtype == np.float64
    assert cosine(probe.coef_, reference.coef_) >= 0.9999
    assert probe.intercept_[0] == pytest.approx(reference.intercept_[0], rel=1e-3, abs=1e-3)
    assert probe.regularization_ == regularization and probe.backend_ == "sklearn"
    assert probe.n_features_in_ == 32


def test_a_regularization_path_is_chosen_on_a_validation_split() -> None:
    x, y = separable(n=400)
    probe = ProbeClassifier(regularization=[0.01, 1.0, 100.0]).fit(x, y)
    assert probe.regularization_ in (0.01, 1.0, 100.0)
    assert probe.score(x, y) >= 0.95


def test_cross_validation_of_one_value_trains_on_every_row_once() -> None:
    x, y = activation_like(600, 16, seed=1, dtype=np.float64)
    plain = ProbeClassifier().fit(x, y)
    validated = ProbeClassifier(cv_folds=3).fit(x, y)
    np.testing.assert_allclose(validated.coef_, plain.coef_, rtol=1e-4, atol=1e-6)
    assert validated.regularization_ == 100.0


def test_cross_validation_chooses_from_a_path() -> None:
    x, y = separable(n=300)
    probe = ProbeClassifier(regularization=[0.1, 10.0], cv_folds=3).fit(x, y)
    assert probe.regularization_ in (0.1, 10.0)
    assert probe.score(x, y) >= 0.95


@pytest.mark.parametrize("kind", ["mean_difference", "lda"])
def test_closed_form_kinds_fit_without_a_regularization(kind: str) -> None:
    x, y = separable()
    probe = ProbeClassifier(kind=kind).fit(x, y)
    assert probe.regularization_ is None and probe.coef_.shape == (1, x.shape[1])
    assert probe.score(x, y) >= 0.95


def test_the_backend_follows_the_model_size_unless_forced() -> None:
    x, y = separable(n=60, dim=4)
    assert ProbeClassifier(model_size_b=7.0).fit(x, y).backend_ == "sklearn"
    assert ProbeClassifier(model_size_b=70.0, backend="sklearn").fit(x, y).backend_ == "sklearn"


def test_pytorch_backend_agrees_with_sklearn() -> None:
    x, y = activation_like(2000, 16, seed=3)
    sk = ProbeClassifier(backend="sklearn").fit(x, y)
    pt = ProbeClassifier(backend="pytorch", device="cpu").fit(x, y)
    assert pt.backend_ == "pytorch"
    assert cosine(sk.coef_, pt.coef_) >= 0.999
    assert pt.intercept_[0] == pytest.approx(sk.intercept_[0], abs=1e-2)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"regularization": -1.0}, "regularization"),
        ({"kind": "tree"}, "kind"),
        ({"backend": "jax"}, "backend"),
        ({"cv_folds": 1}, "cv_folds"),
        ({"validation_split": 1.5}, "validation_split"),
    ],
)
def test_invalid_parameters_raise_value_error_at_fit(params, match: str) -> None:
    x, y = separable(n=40, dim=3)
    estimator = ProbeClassifier(**params)
    with pytest.raises(ValueError, match=match):
        estimator.fit(x, y)


def test_more_than_two_classes_and_one_class_raise_value_error() -> None:
    x, _ = separable(n=30, dim=3)
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        ProbeClassifier().fit(x, np.arange(30) % 3)
    with pytest.raises(ValueError, match="only one class"):
        ProbeClassifier().fit(x, np.ones(30))


def test_too_few_iterations_warn_of_non_convergence() -> None:
    x, y = activation_like(400, 64, seed=2, dtype=np.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ProbeClassifier(regularization=1e-4, max_iterations=1, penalty="l1").fit(x, y)
    assert any(issubclass(w.category, ConvergenceWarning) for w in caught)


def test_clone_keeps_parameters_as_given() -> None:
    estimator = ProbeClassifier([0.1, 1.0], standardize="auto", precision="bf16-mixed", seed=7)
    copy = clone(estimator)
    assert copy.get_params() == estimator.get_params()
    assert copy.regularization == [0.1, 1.0] and copy.standardize == "auto"


def test_probe_classifier_is_exported_by_the_package() -> None:
    assert probe_lab.ProbeClassifier is ProbeClassifier
    assert "ProbeClassifier" in probe_lab.__all__
