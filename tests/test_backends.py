"""Both backends minimize the same objective and land on the same probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fitting import cosine, fit_on_cpu

from probe_lab.backends.pytorch import TorchProbeTrainer
from probe_lab.backends.sklearn import SklearnProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import split_dataset
from probe_lab.data.synthetic import activation_like, seed_task
from probe_lab.errors import ProbeLabError
from probe_lab.fit.linear_probe import LinearProbe
from probe_lab.fit.module import prepared_module
from probe_lab.metrics import auroc
from probe_lab.settings import OptimizerName, ProbeTrainingConfig


@pytest.fixture(scope="module")
def splits():
    x, y = activation_like(4000, 256, seed=42)
    return split_dataset(ActivationDataset(x, y), 0.2, 0.2, seed=42)


@pytest.mark.parametrize("standardize", [False, True])
def test_backends_agree_on_activation_like_data(splits, standardize: bool) -> None:
    sk = fit_on_cpu(SklearnProbeTrainer, splits, standardize=standardize)
    pt = fit_on_cpu(TorchProbeTrainer, splits, standardize=standardize)
    test_sk = auroc(splits.test.labels, sk.decision_function(splits.test))
    test_pt = auroc(splits.test.labels, pt.decision_function(splits.test))
    assert abs(test_sk - test_pt) <= 0.002
    assert cosine(sk.coef_, pt.coef_) >= 0.999
    assert pt.intercept_ == pytest.approx(sk.intercept_, abs=1e-2)
    assert pt.fit_details["optimizer"] == "lbfgs" and pt.fit_details["converged"]
    # Preconditioning is what makes raw outlier dimensions cheap: tens of iterations, not hundreds.
    assert pt.fit_details["iterations"] <= 60


@pytest.mark.parametrize("standardize", [False, True])
def test_raw_features_precondition_from_a_row_sample_and_keep_the_optimum(splits, standardize, monkeypatch) -> None:
    """Raw features take their statistics (which only center and precondition) from a sample of
    rows and still land on sklearn's optimum; standardized ones, whose objective they define, use
    every row."""
    from probe_lab.data import stats
    from probe_lab.fit import objective

    samples = []

    def recording_moments(x, block_rows=None, sample_rows=None, *, rows=None):
        samples.append(len(rows) if rows is not None else len(x))
        return stats.device_moments(x, block_rows, sample_rows, rows=rows)

    monkeypatch.setattr(objective, "PRECONDITIONER_ROWS", 100)
    monkeypatch.setattr(objective, "device_moments", recording_moments)
    pt = fit_on_cpu(TorchProbeTrainer, splits, standardize=standardize)
    sk = fit_on_cpu(SklearnProbeTrainer, splits, standardize=standardize)
    assert samples == [len(splits.train) if standardize else 100]
    assert cosine(sk.coef_, pt.coef_) >= 0.999 and pt.fit_details["converged"]


def test_lightning_objective_is_stationary_at_sklearns_optimum(splits) -> None:
    """The gradient of the Lightning loss vanishes where sklearn stopped: the same objective."""
    sk = fit_on_cpu(SklearnProbeTrainer, splits)
    config = ProbeTrainingConfig(device="cpu")
    module = prepared_module(splits.train, [config.regularization], config, OptimizerName.lbfgs)
    module.probe.load_raw(torch.from_numpy(sk.coef_), sk.intercept_)
    x = torch.from_numpy(splits.train.materialize())
    y = torch.from_numpy(splits.train.labels)
    loss = module.loss(x, y)
    grad_u, grad_c = torch.autograd.grad(loss, [module.probe.linear.weight, module.probe.linear.bias])
    # Chain rule back to raw weights: dJ/dw = s ⊙ dJ/du.
    grad_w = grad_u[0] * module.probe.scale
    assert grad_w.abs().max() < 1e-4 and grad_c.abs().max() < 1e-5
    # ...while AdamW-style decay (the seed's objective) is far from stationary there.
    decay = 1.0 / 100.0 * torch.from_numpy(sk.coef_)
    assert (grad_w - module.objective.penalty_coef * 2 * torch.from_numpy(sk.coef_) + decay).abs().max() > 1e-3


def test_adamw_minibatches_solve_the_seed_task() -> None:
    """The seed's AdamW trainer reached test AUROC 0.72 here; with the right objective AdamW solves it."""
    x, y = seed_task(300, 256, seed=0)
    task = split_dataset(ActivationDataset(x, y), 0.2, 0.2, seed=0)
    pt = fit_on_cpu(
        TorchProbeTrainer, task, optimizer="adamw", batch_size=32, gradient_accumulation_steps=2, learning_rate=0.01
    )
    assert pt.fit_details["optimizer"] == "adamw" and pt.fit_details["epochs"] >= 1
    assert auroc(task.test.labels, pt.decision_function(task.test)) >= 0.99


def test_bf16_storage_reaches_the_float32_optimum(splits) -> None:
    fp32 = fit_on_cpu(TorchProbeTrainer, splits)
    bf16 = fit_on_cpu(TorchProbeTrainer, splits, precision="bf16-mixed")
    assert bf16.fit_details["precision"] == "bf16-mixed"
    assert cosine(fp32.coef_, bf16.coef_) > 0.999


def test_l1_is_refused_by_the_lightning_backend() -> None:
    with pytest.raises(ProbeLabError, match="penalty=l1"):
        TorchProbeTrainer(8, ProbeTrainingConfig(penalty="l1"))


def test_l1_sklearn_probe_is_sparse(splits) -> None:
    sparse = fit_on_cpu(SklearnProbeTrainer, splits, penalty="l1", regularization=50.0)
    assert sparse.fit_details["solver"] == "liblinear"
    assert (sparse.coef_ == 0).mean() > 0.3


def test_newton_cholesky_does_not_fall_back_on_many_rows() -> None:
    """In float32 the Hessian of 60k outlier-laden rows is too ill-conditioned: sklearn fell back to lbfgs."""
    x, y = activation_like(60000, 512, seed=0)
    trainer = SklearnProbeTrainer(512, ProbeTrainingConfig(device="cpu"))
    trainer.fit(x, y)
    assert trainer.fit_details["solver"] == "newton-cholesky"
    assert trainer.fit_details["iterations"] <= 10


@pytest.mark.parametrize("standardize", [False, True])
def test_backends_agree_when_activations_share_a_large_offset(standardize: bool) -> None:
    """A mean far from zero (+500 on every dimension) leaves the optimum where it was, for both backends."""
    x, y = activation_like(4000, 256, seed=1)
    shifted = split_dataset(ActivationDataset(x + 500.0, y), 0.2, 0.2, seed=1)
    sk = fit_on_cpu(SklearnProbeTrainer, shifted, standardize=standardize)
    pt = fit_on_cpu(TorchProbeTrainer, shifted, standardize=standardize)
    assert sk.fit_details["converged"] and sk.fit_details["iterations"] <= 10
    assert cosine(sk.coef_, pt.coef_) >= 0.999
    unshifted = split_dataset(ActivationDataset(x, y), 0.2, 0.2, seed=1)
    reference = fit_on_cpu(SklearnProbeTrainer, unshifted, standardize=standardize)
    assert cosine(sk.coef_, reference.coef_) >= 0.9999


@pytest.mark.parametrize("trainer_class", [SklearnProbeTrainer, TorchProbeTrainer])
def test_standardized_fit_exports_raw_space_logits(splits, trainer_class) -> None:
    """standardize=true is sklearn on StandardScaler features; the saved probe gives its logits on raw rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(splits.train.materialize().astype(np.float64))
    reference = LogisticRegression(C=0.01, solver="newton-cholesky", max_iter=1000).fit(
        scaler.transform(splits.train.materialize().astype(np.float64)), splits.train.labels
    )
    expected = reference.decision_function(scaler.transform(splits.test.materialize().astype(np.float64)))
    trainer = fit_on_cpu(trainer_class, splits, standardize=True)
    np.testing.assert_allclose(trainer.decision_function(splits.test), expected, rtol=1e-3, atol=2e-3)


def test_sklearn_backend_emits_no_warnings_at_defaults(splits) -> None:
    """No ConvergenceWarning, no deprecation of the parameters it passes (l2 and l1)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_on_cpu(SklearnProbeTrainer, splits)
        fit_on_cpu(SklearnProbeTrainer, splits, penalty="l1")


def test_adamw_early_stopping_exports_the_best_checkpoint(splits, tmp_path) -> None:
    """EarlyStopping ends the run on a val-AUROC plateau; the exported probe is the best epoch's."""
    trainer = TorchProbeTrainer(
        splits.train.dim,
        ProbeTrainingConfig(
            device="cpu",
            optimizer="adamw",
            batch_size=256,
            learning_rate=0.01,
            max_iterations=200,
            early_stopping_patience=2,
        ),
        run_dir=tmp_path,
    )
    trainer.fit_datasets(splits.train, splits.val)
    assert trainer.fit_details["epochs"] < 200  # stopped early
    (best,) = (tmp_path / "checkpoints").glob("best-*.ckpt")
    best_epoch = int(best.name.split("epoch=")[1].split("-")[0])
    assert best_epoch < trainer.fit_details["epochs"]  # the best epoch was not the last one...
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    probe = LinearProbe(splits.train.dim)
    probe.load_state_dict({k.removeprefix("probe."): v for k, v in state.items() if k.startswith("probe.")})
    np.testing.assert_array_equal(trainer.coef_, probe.raw_weight().numpy())  # ...and it is what was exported
    assert "train_loss" in (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0]


def test_gradient_accumulation_takes_fewer_optimizer_steps(splits) -> None:
    steps = {}
    for accumulate in (1, 2):
        trainer = fit_on_cpu(
            TorchProbeTrainer,
            splits,
            optimizer="adamw",
            batch_size=200,
            max_iterations=2,
            early_stopping=False,
            gradient_accumulation_steps=accumulate,
        )
        steps[accumulate] = trainer.fit_details["optimizer_steps"]
    assert steps[1] == 2 * 12  # 2400 rows / 200 per batch, two epochs
    assert steps[2] == 2 * 6


def test_callbacks_given_to_the_trainer_join_lightnings_own(splits) -> None:
    """Callbacks passed to TorchProbeTrainer see the fit (one L-BFGS step, one validation) beside
    probe_lab's own checkpointing."""
    import lightning.pytorch as pl

    class Recorder(pl.Callback):
        def __init__(self) -> None:
            self.hooks: list[str] = []

        def on_fit_start(self, trainer, pl_module) -> None:
            self.hooks.append("fit_start")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.hooks.append("train_batch_end")

        def on_validation_end(self, trainer, pl_module) -> None:
            self.hooks.append("validation_end")
            assert any(isinstance(callback, pl.callbacks.ModelCheckpoint) for callback in trainer.callbacks)

        def on_fit_end(self, trainer, pl_module) -> None:
            self.hooks.append("fit_end")

    recorder = Recorder()
    trainer = TorchProbeTrainer(splits.train.dim, ProbeTrainingConfig(device="cpu"), callbacks=[recorder])
    trainer.fit_datasets(splits.train, splits.val)
    assert recorder.hooks == ["fit_start", "train_batch_end", "validation_end", "fit_end"]


@pytest.mark.parametrize("standardize", [False, True])
def test_preconditioned_hessian_diagonal_is_the_same_in_every_coordinate(standardize: bool) -> None:
    """What the preconditioner promises: at the start (every probability at the positive rate, here ½)
    the objective's Hessian diagonal in the probe's coordinates is ¼ for raw features in every
    coordinate and every column of a path, whatever each feature's scale (outliers 30x larger
    included), and ¼ + reg/N for standardized ones."""
    x, y = activation_like(400, 12, seed=3)
    y = np.arange(400) % 2  # balanced: the start is p = 1/2 on every row
    train = ActivationDataset(x.astype(np.float64).astype(np.float32), y)
    path = [0.1, 10.0, 1000.0]
    config = ProbeTrainingConfig(device="cpu", standardize=standardize)
    module = prepared_module(train, path, config, OptimizerName.lbfgs)
    u = module.probe.linear.weight
    data, labels = torch.from_numpy(train.materialize()), torch.from_numpy(train.labels)
    # The two-product evaluation: the one-read evaluations' gradients are not differentiable again.
    objective = module.objective
    loss = objective.two_product_loss_sum(module.probe, data, labels) / len(train) + objective.penalty(module.probe)
    (gradient,) = torch.autograd.grad(loss, u, create_graph=True)
    diagonal = torch.stack(
        [torch.autograd.grad(gradient[k, j], u, retain_graph=True)[0][k, j] for k in range(3) for j in range(12)]
    ).reshape(3, 12)
    expected = torch.full((3, 12), 0.25) + (torch.tensor(path)[:, None] / len(train) if standardize else 0.0)
    torch.testing.assert_close(diagonal, expected, rtol=2e-4, atol=1e-6)
