"""A trained probe as a plain linear function of raw activations, saved as safetensors.

`ProbeWeights` is what both backends export: weight (D,) and bias, float32, acting on raw
activations. Files hold tensors `weight` (D,) and `bias` (1,) plus a JSON string of metadata in the
safetensors header; loading never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save

from probe_lab.artifacts import atomic_write_bytes
from probe_lab.data.dataset import ActivationDataset
from probe_lab.errors import ProbeLabError

METADATA_KEY = "probe_lab"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ProbeWeights:
    weight: np.ndarray  # (D,) float32
    bias: float

    @property
    def input_dim(self) -> int:
        return int(self.weight.shape[0])

    def decision_function(self, data: ActivationDataset | np.ndarray) -> np.ndarray:
        """Logits w·x + b for each row, computed block by block (data may be memory-mapped)."""
        return decision_functions([self], data)[:, 0]

    def predict_proba(self, data: ActivationDataset | np.ndarray) -> np.ndarray:
        """Probability of class 1 for each row."""
        return sigmoid(self.decision_function(data))


def decision_functions(probes: list[ProbeWeights], data: ActivationDataset | np.ndarray) -> np.ndarray:
    """Logits of several probes of the same width for each row, (N, K), in one pass over the data.

    Computed in float32 block by block where the data lives: on the GPU for data held there.
    """
    return device_decision_functions(probes, data).cpu().numpy()


def device_decision_functions(probes: list[ProbeWeights], data: ActivationDataset | np.ndarray) -> torch.Tensor:
    """`decision_functions` as a float32 tensor where the data lives (N, K)."""
    if isinstance(data, np.ndarray):
        data = ActivationDataset(data, name="X")
    input_dim = probes[0].input_dim
    if data.dim != input_dim:
        raise ProbeLabError(f"{data.name}: activations have {data.dim} dims, the probe expects {input_dim}")
    weights = torch.from_numpy(np.stack([probe.weight for probe in probes], axis=1).astype(np.float32))
    biases = torch.tensor([probe.bias for probe in probes], dtype=torch.float32)
    weights, biases = weights.to(data.device), biases.to(data.device)
    step = data.block_rows * (DEVICE_BLOCK_FACTOR if data.device.type != "cpu" else 1)
    logits = [
        torch.addmm(biases, data.read(np.arange(start, min(start + step, len(data)))).float(), weights)
        for start in range(0, len(data), step)
    ]
    return torch.cat(logits) if logits else torch.empty((0, len(probes)), dtype=torch.float32, device=data.device)


# On a GPU, blocks this many times larger than the CPU's keep kernel launches few.
DEVICE_BLOCK_FACTOR = 16


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -logits.astype(np.float64)))


def save_probe(path: str | Path, probe: ProbeWeights, metadata: dict[str, Any] | None = None) -> None:
    """Write the probe atomically (a reader never sees half a file), readable by all (0o644)."""
    tensors = {
        "weight": np.ascontiguousarray(probe.weight, dtype=np.float32),
        "bias": np.array([probe.bias], dtype=np.float32),
    }
    header = {"format_version": FORMAT_VERSION, "input_dim": probe.input_dim, **(metadata or {})}
    data = save(tensors, metadata={METADATA_KEY: json.dumps(header)})
    atomic_write_bytes(Path(path), data, mode=0o644)  # a probe is meant to be shared like the other artifacts


def load_probe(path: str | Path) -> tuple[ProbeWeights, dict[str, Any]]:
    """(weights, metadata) from a probe file, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ProbeLabError(f"{path}: probe file not found")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="numpy") as handle:
            raw_meta = (handle.metadata() or {}).get(METADATA_KEY, "{}")
        metadata = json.loads(raw_meta)
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not a JSON object")
    except (SafetensorError, OSError, ValueError) as err:
        raise ProbeLabError(f"{path}: not a probe_lab safetensors file ({str(err).splitlines()[0][:120]})") from None
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or weight.ndim != 1 or bias.shape != (1,):
        raise ProbeLabError(f"{path}: expected tensors weight (D,) and bias (1,)")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ProbeLabError(f"{path}: probe weights contain NaN or Inf")
    return ProbeWeights(weight.astype(np.float32), float(bias[0])), metadata
