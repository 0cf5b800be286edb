"""Probe training backends: scikit-learn (in memory) and PyTorch Lightning (streaming, GPU).

`backend_class` imports a backend only when it is used: Lightning takes seconds to import, which a
scikit-learn run should not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe_lab.settings.backend import BACKEND_NAMES

if TYPE_CHECKING:
    from probe_lab.backends.base import ProbeTrainer


def backend_class(name: str) -> type[ProbeTrainer]:
    if name == "sklearn":
        from probe_lab.backends.sklearn import SklearnProbeTrainer

        return SklearnProbeTrainer
    if name == "pytorch":
        from probe_lab.backends.pytorch import TorchProbeTrainer

        return TorchProbeTrainer
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}")
