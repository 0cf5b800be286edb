"""probe_lab: linear probes on language-model activations, with a scikit-learn and a Lightning backend.

The Python API keeps the seed guide's names; the command line is `python -m probe_lab`. Names are
imported on first use, so `python -m probe_lab` with the sklearn backend never imports Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ActivationDataset": "probe_lab.data.dataset",
    "ActivationStore": "probe_lab.store",
    "LinearProbe": "probe_lab.fit.linear_probe",
    "Probe": "probe_lab.detector",
    "ProbeClassifier": "probe_lab.estimator",
    "ProbeDetector": "probe_lab.detector",
    "ProbeLabError": "probe_lab.errors",
    "ProbeTrainerFactory": "probe_lab.api",
    "ProbeTrainingConfig": "probe_lab.settings",
    "ProbeWeights": "probe_lab.probe",
    "SklearnProbeTrainer": "probe_lab.backends.sklearn",
    "TorchProbeTrainer": "probe_lab.backends.pytorch",
    "create_probe_trainer": "probe_lab.api",
    "load_probe": "probe_lab.probe",
    "save_probe": "probe_lab.probe",
}

__all__ = [
    "ActivationDataset",
    "ActivationStore",
    "LinearProbe",
    "Probe",
    "ProbeClassifier",
    "ProbeDetector",
    "ProbeLabError",
    "ProbeTrainerFactory",
    "ProbeTrainingConfig",
    "ProbeWeights",
    "SklearnProbeTrainer",
    "TorchProbeTrainer",
    "create_probe_trainer",
    "load_probe",
    "save_probe",
]

if TYPE_CHECKING:
    from probe_lab.api import ProbeTrainerFactory, create_probe_trainer
    from probe_lab.backends.pytorch import TorchProbeTrainer
    from probe_lab.backends.sklearn import SklearnProbeTrainer
    from probe_lab.data.dataset import ActivationDataset
    from probe_lab.detector import Probe, ProbeDetector
    from probe_lab.errors import ProbeLabError
    from probe_lab.estimator import ProbeClassifier
    from probe_lab.fit.linear_probe import LinearProbe
    from probe_lab.probe import ProbeWeights, load_probe, save_probe
    from probe_lab.settings import ProbeTrainingConfig
    from probe_lab.store import ActivationStore


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'probe_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
