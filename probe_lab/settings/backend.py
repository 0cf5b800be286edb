"""Which backend trains the probe: by model size, or as forced, with the reason in words."""

from __future__ import annotations

from dataclasses import dataclass

BACKEND_NAMES = ("sklearn", "pytorch")


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "sklearn" | "pytorch"
    reason: str


def resolve_backend(requested: str, model_size_b: float, threshold_b: float) -> BackendChoice:
    """`auto`: sklearn below `threshold_b` billion parameters, pytorch at or above; else as forced."""
    if requested != "auto":
        return BackendChoice(requested, f"backend={requested} set explicitly")
    if model_size_b < threshold_b:
        return BackendChoice("sklearn", f"model.size_b={model_size_b:g} < backend.threshold_b={threshold_b:g}")
    return BackendChoice("pytorch", f"model.size_b={model_size_b:g} >= backend.threshold_b={threshold_b:g}")
