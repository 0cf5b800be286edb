"""Choosing a probe: regularization=auto, standardize=auto, and probe.cv_folds (cross-validation)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from probe_lab import ActivationDataset, ProbeTrainingConfig, SklearnProbeTrainer, TorchProbeTrainer
from probe_lab.errors import ProbeLabError
from probe_lab.selection import cross_validation_folds
from probe_lab.settings.probe import AUTO_REGULARIZATION
from tests.fitting import cosine


def noisy_task(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Few rows, much label noise and features of unequal scale: the penalty's effect is visible."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) * rng.uniform(0.2, 5.0, size=dim) + 3.0
    direction = rng.normal(size=dim) / np.linspace(0.5, 4.0, dim)
    y = ((x - 3.0) @ direction + rng.normal(scale=6.0, size=n) > 0).astype(np.int64)
    return x.astype(np.float32), y


@pytest.mark.parametrize("trainer_class", [SklearnProbeTrainer, TorchProbeTrainer])
def test_cross_validation_chooses_and_refits_as_logistic_regression_cv(trainer_class) -> None:
    x, y = noisy_task(900, 24, seed=0)
    x_train, y_train, x_val, y_val = x[:700], y[:700], x[700:], y[700:]
    trainer = trainer_class(24, ProbeTrainingConfig(regularization="auto", cv_folds=5, device="cpu", seed=7))
    trainer.fit(x_train, y_train, x_val, y_val)

    pooled, pooled_y = x.astype(np.float64), y  # train rows then validation rows, as the trainer pools them
    folds = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=7).split(pooled, pooled_y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's notes on its own parameters' futures
        reference = LogisticRegressionCV(
            Cs=[1.0 / value for value in AUTO_REGULARIZATION], cv=folds, scoring="roc_auc", max_iter=10_000, tol=1e-10
        ).fit(pooled, pooled_y)
    assert trainer.regularization == pytest.approx(1.0 / reference.C_[0])
    assert cosine(trainer.coef_, reference.coef_[0]) >= 0.999
    means = [point["cv_auroc_mean"] for point in trainer.regularization_path]
    np.testing.assert_allclose(means, reference.scores_[1].mean(axis=0), atol=2e-3)
    assert trainer.cross_validation["folds"] == 5 and trainer.cross_validation["rows"] == 900
    assert len(trainer.regularization_path[0]["fold_aurocs"]) == 5


def test_validation_scores_are_out_of_fold() -> None:
    """With cv_folds, a validation row is scored by the fold probe that did not train on it."""
    x, y = noisy_task(400, 8, seed=1)
    config = ProbeTrainingConfig(regularization=[1.0, 100.0], cv_folds=4, device="cpu", seed=3)
    trainer = SklearnProbeTrainer(8, config)
    trainer.fit(x[:300], y[:300], x[300:], y[300:])
    folds = list(StratifiedKFold(n_splits=4, shuffle=True, random_state=3).split(x, y))
    fit_rows, held_out = folds[0]
    model = LogisticRegression(C=1.0 / trainer.regularization, max_iter=10_000, tol=1e-10)
    model.fit(x[fit_rows].astype(np.float64), y[fit_rows])
    val_rows = held_out[held_out >= 300]
    expected = model.decision_function(x[val_rows].astype(np.float64))
    np.testing.assert_allclose(trainer.val_scores[val_rows - 300], expected, atol=1e-3)
    assert trainer.val_auroc == pytest.approx(roc_auc_score(y[300:], trainer.val_scores))


def test_folds_keep_a_samples_rows_together() -> None:
    rng = np.random.default_rng(0)
    samples = np.repeat(np.arange(60), rng.integers(1, 6, size=60))
    labels = (samples % 3 == 0).astype(np.int64)
    dataset = ActivationDataset(rng.normal(size=(len(samples), 4)).astype(np.float32), labels)
    dataset.groups = samples
    for fit_rows, held_out in cross_validation_folds(dataset, 5, seed=0):
        assert not set(samples[fit_rows]) & set(samples[held_out])
        assert set(labels[held_out]) == {0, 1}
    plain = ActivationDataset(dataset.materialize(), labels)
    assert any(set(samples[a]) & set(samples[b]) for a, b in cross_validation_folds(plain, 5, seed=0)), (
        "without groups the same rows are split freely (the check above could not fail)"
    )


def test_too_few_rows_of_a_class_for_the_folds_is_one_clear_error() -> None:
    dataset = ActivationDataset(np.zeros((20, 2), dtype=np.float32), np.array([1] * 3 + [0] * 17))
    with pytest.raises(ProbeLabError, match=r"probe.cv_folds=5: .* only 3 rows of one class"):
        cross_validation_folds(dataset, 5, seed=0)


def test_standardize_auto_tries_both_scalings_and_keeps_the_better() -> None:
    x, y = noisy_task(800, 16, seed=2)
    config = ProbeTrainingConfig(regularization=[10.0, 1000.0], standardize="auto", device="cpu")
    trainer = SklearnProbeTrainer(16, config)
    trainer.fit(x[:600], y[:600], x[600:], y[600:])
    path = trainer.regularization_path
    assert [(p["standardize"], p["regularization"]) for p in path] == [
        (False, 10.0),
        (False, 1000.0),
        (True, 10.0),
        (True, 1000.0),
    ]
    best = max(path, key=lambda point: point["val_auroc"])
    assert (trainer.standardized, trainer.regularization) == (best["standardize"], best["regularization"])
    alone = SklearnProbeTrainer(16, ProbeTrainingConfig(regularization=1000.0, standardize=True, device="cpu"))
    alone.fit(x[:600], y[:600], x[600:], y[600:])
    assert path[3]["val_auroc"] == pytest.approx(alone.val_auroc, abs=1e-6)


@pytest.mark.parametrize("standardize", [False, True])
def test_the_pytorch_backends_folds_in_one_fit_are_each_folds_own_optimum(standardize: bool) -> None:
    """Every fold's path as columns of one probe (each fitted on its fold's rows, standardized by its
    fold's statistics) scores the held-out rows as the sklearn backend's fold-by-fold fits do."""
    x, y = noisy_task(600, 12, seed=4)
    settings = {"regularization": [1.0, 100.0], "cv_folds": 3, "standardize": standardize, "device": "cpu"}
    joint, alone = (
        TorchProbeTrainer(12, ProbeTrainingConfig(**settings)),
        SklearnProbeTrainer(12, ProbeTrainingConfig(**settings)),
    )
    for trainer in (joint, alone):
        trainer.fit(x[:450], y[:450], x[450:], y[450:])
    for ours, theirs in zip(joint.regularization_path, alone.regularization_path, strict=True):
        np.testing.assert_allclose(ours["fold_aurocs"], theirs["fold_aurocs"], atol=1e-3)
    np.testing.assert_allclose(joint.val_scores, alone.val_scores, atol=2e-3 * (1 + np.abs(alone.val_scores).max()))


def test_the_aurocs_of_many_columns_are_roc_auc_score_column_by_column() -> None:
    from probe_lab.metrics import aurocs

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 3000)
    scores = np.round(rng.normal(size=(3000, 5)) + 0.4 * labels[:, None], 1).astype(np.float32)  # many ties
    expected = [roc_auc_score(labels, scores[:, k]) for k in range(5)]
    np.testing.assert_allclose(aurocs(labels, scores), expected, rtol=0, atol=1e-12)


def test_each_adamw_fit_of_a_choice_keeps_its_own_checkpoint_and_patience() -> None:
    """One set of composed callbacks serves every fit of a choice: each fit restores its own best
    checkpoint (not an earlier fit's, nor one in an earlier fit's deleted folder)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from probe_lab.fit.trainer import LightningParts

    x, y = noisy_task(600, 8, seed=5)
    checkpoint = ModelCheckpoint(monitor="val_auroc", mode="max")
    parts = LightningParts(callbacks=[checkpoint, EarlyStopping(monitor="val_auroc", mode="max", patience=3)])
    config = ProbeTrainingConfig(
        optimizer="adamw", max_iterations=15, learning_rate=0.05, standardize="auto", cv_folds=3, device="cpu"
    )
    trainer = TorchProbeTrainer(8, config, lightning=parts)
    trainer.fit(x[:450], y[:450], x[450:], y[450:])
    raw, standardized = ([p for p in trainer.regularization_path if p["standardize"] is s] for s in (False, True))
    assert raw[0]["fold_aurocs"] != standardized[0]["fold_aurocs"]
    assert checkpoint.dirpath is None  # the composed callback itself is left as the user gave it
