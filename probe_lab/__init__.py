"""probe_lab: linear probes on language-model activations, with a scikit-learn and a Lightning backend.

The Python API keeps the seed guide's names; the command line is `python -m probe_lab`.
"""

from probe_lab.api import ProbeTrainerFactory, create_probe_trainer
from probe_lab.backends.lightning import TorchProbeTrainer
from probe_lab.backends.sklearn import SklearnProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.errors import ProbeLabError
from probe_lab.linear_probe import LinearProbe
from probe_lab.probe import ProbeWeights, load_probe, save_probe
from probe_lab.settings import ProbeTrainingConfig

__all__ = [
    "ActivationDataset",
    "LinearProbe",
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
