"""A regularization path: every value trained in one run, the best on validation kept."""

from __future__ import annotations

import pytest
from fitting import cosine, fit_on_cpu

from probe_lab.backends.pytorch import TorchProbeTrainer
from probe_lab.backends.sklearn import SklearnProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import split_dataset
from probe_lab.data.synthetic import activation_like
from probe_lab.errors import ProbeLabError
from probe_lab.metrics import auroc
from probe_lab.settings import ProbeTrainingConfig

PATH = [0.01, 1.0, 100.0, 10000.0]


@pytest.fixture(scope="module")
def splits():
    x, y = activation_like(3000, 64, seed=11)
    return split_dataset(ActivationDataset(x, y), 0.2, 0.2, seed=11)


@pytest.mark.parametrize("trainer_class", [SklearnProbeTrainer, TorchProbeTrainer])
def test_the_path_keeps_the_value_with_the_best_validation_auroc(splits, trainer_class) -> None:
    trainer = fit_on_cpu(trainer_class, splits, regularization=PATH)
    path = trainer.regularization_path
    assert [point["regularization"] for point in path] == PATH
    best = max(path, key=lambda point: point["val_auroc"])
    assert trainer.regularization == best["regularization"]
    assert trainer.val_auroc == best["val_auroc"] == auroc(splits.val.labels, trainer.decision_function(splits.val))
    assert len({round(point["val_auroc"], 6) for point in path}) > 1  # the values really differ


@pytest.mark.parametrize("trainer_class", [SklearnProbeTrainer, TorchProbeTrainer])
def test_each_value_of_the_path_is_the_probe_a_single_run_would_train(splits, trainer_class) -> None:
    """Every column of the joint Lightning fit (and every warm-started sklearn fit) is that value's optimum."""
    path = fit_on_cpu(trainer_class, splits, regularization=PATH)
    columns = path._fit(splits.train, splits.val, PATH, path.placement, standardize=False)  # every probe of the path
    for point, column in zip(path.regularization_path, columns, strict=True):
        single = fit_on_cpu(SklearnProbeTrainer, splits, regularization=point["regularization"])
        assert abs(point["val_auroc"] - single.val_auroc) < 2e-3
        assert cosine(column.weights.weight, single.coef_) > 0.999
        assert abs(column.weights.bias - single.intercept_) < 0.01 * (1 + abs(single.intercept_))


def test_an_empty_or_non_positive_path_is_refused() -> None:
    with pytest.raises(ProbeLabError, match="empty list"):
        ProbeTrainingConfig(regularization=[])
    with pytest.raises(ProbeLabError, match=r"probe\.regularization must be a positive number"):
        ProbeTrainingConfig(regularization=[1.0, -2.0])


def test_the_path_on_the_command_line(cli) -> None:
    result = cli("data.n=1500", "data.dim=32", "probe.regularization=[0.01,1,100,10000]", "backend=pytorch")
    assert result.returncode == 0, result.stderr
    metrics = result.metrics()
    path = metrics["regularization_path"]
    assert [point["regularization"] for point in path] == PATH
    assert metrics["regularization"] == max(path, key=lambda point: point["val_auroc"])["regularization"]
    # The run's own evaluation of the exported probe reproduces the chosen value's validation AUROC.
    assert metrics["val"]["auroc"] == pytest.approx(max(point["val_auroc"] for point in path), abs=1e-6)
    assert (result.run_dir / "regularization_path.png").stat().st_size > 0
    assert "← chosen" in result.stdout
