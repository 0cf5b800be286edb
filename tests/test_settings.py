"""ProbeTrainingConfig keeps the seed guide's fields and defaults and talks to scikit-learn correctly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from probe_lab.errors import ProbeLabError
from probe_lab.settings import ProbeTrainingConfig


def test_seed_guide_defaults() -> None:
    config = ProbeTrainingConfig()
    assert config.regularization == 100.0
    assert config.penalty == "l2"
    assert config.max_iterations == 2000
    assert config.early_stopping is True
    assert config.early_stopping_patience == 5
    assert config.validation_split == 0.2
    assert config.learning_rate == 0.001
    assert config.batch_size == 8192
    assert config.use_mixed_precision is True
    assert config.gradient_accumulation_steps == 1
    assert config.device == "cuda"
    assert config.standardize is False


def test_sklearn_params_translate_the_seed_penalty_form() -> None:
    params = ProbeTrainingConfig(regularization=50.0, penalty="l1").to_sklearn_params()
    assert params == {"C": 0.02, "l1_ratio": 1.0, "max_iter": 2000, "random_state": 42, "solver": "liblinear"}
    assert "penalty" not in ProbeTrainingConfig().to_sklearn_params()


@pytest.mark.parametrize(
    ("n_samples", "n_features", "solver"),
    [(5000, 256, "newton-cholesky"), (2400, 4096, "lbfgs"), (100000, 8192, "lbfgs"), (None, None, "lbfgs")],
)
def test_auto_solver_follows_the_problem_shape(n_samples: int | None, n_features: int | None, solver: str) -> None:
    assert ProbeTrainingConfig().to_sklearn_params(n_samples, n_features)["solver"] == solver


@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_installed_sklearn_accepts_the_params_without_warnings(penalty: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5))
    y = (x[:, 0] + 0.5 * rng.standard_normal(200) > 0).astype(int)
    params = ProbeTrainingConfig(penalty=penalty, regularization=1.0).to_sklearn_params(200, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LogisticRegression(**params).fit(x, y)


def test_dict_round_trip() -> None:
    config = ProbeTrainingConfig(regularization=3.0, penalty="l1", standardize=True, precision="bf16-mixed")
    values = config.to_dict()
    assert values["penalty"] == "l1" and values["optimizer"] == "auto"
    assert ProbeTrainingConfig.from_dict(values) == config
    with pytest.raises(ProbeLabError, match="no field"):
        ProbeTrainingConfig.from_dict({"regularisation": 1.0})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"regularization": 0.0}, "probe.regularization"),
        ({"regularization": -1.0}, "probe.regularization"),
        ({"penalty": "l3"}, "probe.penalty"),
        ({"batch_size": 0}, "probe.batch_size"),
        ({"validation_split": 1.0}, "validation_split"),
        ({"precision": "fp8"}, "precision"),
        ({"penalty": "l1", "solver": "newton-cholesky"}, "probe.solver"),
    ],
)
def test_invalid_values_name_the_setting(kwargs: dict, message: str) -> None:
    with pytest.raises(ProbeLabError, match=message):
        ProbeTrainingConfig(**kwargs)


def test_streaming_settings_are_declared_once() -> None:
    """The data group's streaming fields and the Python API's `streaming` are one declaration."""
    from probe_lab.settings import StreamingSettings
    from probe_lab.settings.data import StoreData

    assert ProbeTrainingConfig().streaming == StreamingSettings() == StoreData(path="s").streaming()
    assert StoreData(path="s", num_workers=7).streaming() == StreamingSettings(num_workers=7)
    with pytest.raises(ProbeLabError, match=r"data\.read_mb"):
        StreamingSettings(read_mb=0)
