"""The seed guide's per-sample layout: a folder of tensor files, one sample each.

A sample file holds one plain floating-point tensor, read with `torch.load(weights_only=True)` (never
unpickling objects): a vector (D,), or (L, D) for L layers, where (1, D) is one vector (D,). The files
of a folder are its `.pt`/`.pth` files in natural name order (sample_2 before sample_10). Both
`data=pt_files` (probe_lab.data.tables.TensorFileTable) and `probe_lab.convert` read them by these rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from probe_lab.errors import ProbeLabError

TENSOR_SUFFIXES = (".pt", ".pth")


def list_tensor_files(directory: Path, name: str) -> list[Path]:
    """The sample files of `directory` in natural name order; `name` is how errors refer to the folder.

    Raises a ProbeLabError when the folder is missing or holds no tensor files.
    """
    if not directory.is_dir():
        raise ProbeLabError(f"{name}: directory not found")
    paths = natural_sorted([path for path in directory.iterdir() if path.suffix in TENSOR_SUFFIXES])
    if not paths:
        raise ProbeLabError(f"{name}: no {' or '.join(TENSOR_SUFFIXES)} tensor files")
    return paths


def natural_sorted(paths: Sequence[Path]) -> list[Path]:
    """sample_2 before sample_10."""

    def key(path: Path) -> list[object]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]

    return sorted(paths, key=key)


def load_tensor_file(path: Path) -> torch.Tensor:
    """One plain floating-point tensor from a file, refusing anything that would need unpickling of objects."""
    if not path.is_file():
        raise ProbeLabError(f"{path}: file not found")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    # Arbitrary bytes make torch's restricted unpickler fail in many ways (KeyError, IndexError, ...);
    # for an untrusted file each of them means the same thing.
    except Exception as err:
        text = str(err).strip()
        first_line = text.splitlines()[0] if text else type(err).__name__
        raise ProbeLabError(f"{path}: not a plain tensor file ({first_line[:160]})") from None
    if not isinstance(value, torch.Tensor):
        raise ProbeLabError(f"{path}: holds a {type(value).__name__}, expected a tensor")
    if not value.is_floating_point():
        raise ProbeLabError(f"{path}: holds a {value.dtype} tensor, expected floating-point activations")
    return value


def as_vector(tensor: torch.Tensor) -> torch.Tensor:
    """A (1, D) tensor as the one vector (D,) it holds; any other tensor as it is."""
    return tensor[0] if tensor.ndim == 2 and tensor.shape[0] == 1 else tensor


def sample_shape(tensor: torch.Tensor, path: Path) -> tuple[int, ...]:
    """The shape of the sample a file's tensor holds: (D,) (also for a (1, D) tensor) or (L, D)."""
    shape = tuple(as_vector(tensor).shape)
    if len(shape) not in (1, 2):
        raise ProbeLabError(f"{path}: expected a tensor of shape (D,) or (L, D), got {shape}")
    return shape


def sample_vector(tensor: torch.Tensor, path: Path, layer: int | None) -> torch.Tensor:
    """The (D,) vector a sample file's tensor gives for `layer` (None: the file must hold one vector).

    A (1, D) tensor is one vector when no layer is asked for, and one layer otherwise; an (L, D)
    tensor needs a layer in [-L, L); a vector (D,) has no layer to pick, so asking for one is an error.
    """
    if layer is None:
        tensor = as_vector(tensor)
    elif tensor.ndim == 1:
        raise ProbeLabError(
            f"{path}: data.layer={layer} given but the file holds one vector (D,), without a layer axis"
        )
    if tensor.ndim == 2:
        if layer is None:
            raise ProbeLabError(f"{path}: holds {tensor.shape[0]} layers of activations; set data.layer")
        if not -tensor.shape[0] <= layer < tensor.shape[0]:
            raise ProbeLabError(f"{path}: data.layer={layer} is out of range for {tensor.shape[0]} layers")
        tensor = tensor[layer]
    if tensor.ndim != 1:
        raise ProbeLabError(f"{path}: expected a tensor of shape (D,) or (L, D), got {tuple(tensor.shape)}")
    return tensor
