"""Settings: typed values that say what to train and how, checked where they enter.

- `probe`: what is minimized (`ProbeSettings`, the `probe` config group's schema);
- `training`: `ProbeTrainingConfig`, the seed guide's configuration object, which the backends take;
- `data`: the `data` group's schemas, one per source, and `StreamingSettings`;
- `schema`: the Hydra app's schemas (imports Hydra);
- `backend`: the size resolver; `placement`: the one placement decision of a fit.
"""

from probe_lab.settings.data import StreamingSettings
from probe_lab.settings.probe import OptimizerName, Penalty, ProbeSettings, SklearnSolver
from probe_lab.settings.training import PRECISIONS, ProbeTrainingConfig

__all__ = [
    "PRECISIONS",
    "OptimizerName",
    "Penalty",
    "ProbeSettings",
    "ProbeTrainingConfig",
    "SklearnSolver",
    "StreamingSettings",
]
