"""Choosing the backend, device and precision of a run, each with the reason in words."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


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


def resolve_device(requested: str) -> str:
    """ "cuda" or "cpu". `auto` takes CUDA when present; `cuda` without a GPU warns and uses the CPU."""
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        log.warning("device=cuda requested but no CUDA device is available; using the CPU")
    if requested == "cpu":
        return "cpu"
    return "cuda" if available else "cpu"


def resolve_precision(requested: str, device: str) -> str:
    """Lightning precision for the device: `auto` is 16-mixed on CUDA, 32 on the CPU."""
    if requested == "auto":
        return "16-mixed" if device == "cuda" else "32"
    if requested == "16-mixed" and device == "cpu":
        log.warning("precision=16-mixed needs CUDA; using 32 on the CPU (bf16-mixed works on CPUs)")
        return "32"
    return requested


def resolve_memory_budget(configured_gb: float | None, device: str, device_index: int = 0) -> int:
    """Bytes the training split may occupy on the device: the configured GB, or half the device's
    memory (total GPU memory on CUDA, available RAM on the CPU)."""
    if configured_gb is not None:
        return int(configured_gb * 1e9)
    if device == "cuda":
        return torch.cuda.get_device_properties(device_index).total_memory // 2
    return available_ram() // 2


def available_ram() -> int:
    """Bytes of RAM available to a new allocation: MemAvailable (free memory plus the page cache the
    kernel can drop), so the answer does not swing with what happens to be cached."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
