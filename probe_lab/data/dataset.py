"""`ActivationDataset`: activations with binary labels, from an array or from per-sample tensor files.

Arrays may be memory-mapped (N×D, or N×L×D with a layer picked); per-sample files are read lazily
with `torch.load(weights_only=True)`, so a file is never unpickled into arbitrary objects. A dataset
can be narrowed to a subset of rows without copying (`subset`) and read in contiguous blocks
(`blocks`), which is how statistics, finiteness checks and scoring stream through large data.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from probe_lab.errors import ProbeLabError

ArrayLike = np.ndarray | torch.Tensor
BLOCK_ROWS = 8192


class ActivationDataset(Dataset):
    """Rows of activations (float vectors of width `dim`) with optional 0/1 labels.

    activations: an array (N, D) or (N, L, D) (then `layer` picks L), or a sequence of paths to
    per-sample tensor files of shape (D,) or (L, D). labels: (N,) of 0/1, or None (scoring only).
    `name` is how error messages refer to the data (a setting or a file).
    Items are (x float32 tensor (D,), y float32 scalar); `__getitems__` reads whole batches at once.
    """

    def __init__(
        self,
        activations: ArrayLike | Sequence[str | Path],
        labels: ArrayLike | Sequence[int] | None = None,
        *,
        layer: int | None = None,
        name: str = "activations",
        device: str | None = None,
    ) -> None:
        # `device` is accepted for the seed guide's signature; batches are moved by the DataLoader's user.
        del device
        self.name = name
        self.layer = layer
        self._paths: list[Path] | None = None
        self._array: np.ndarray | None = None
        if isinstance(activations, (np.ndarray, torch.Tensor)):
            self._array = _as_numpy(activations)
            n_rows = self._array.shape[0]
            self.dim = _array_dim(self._array, layer, name)
        else:
            self._paths = [Path(p) for p in activations]
            if not self._paths:
                raise ProbeLabError(f"{name}: no activation files given")
            n_rows = len(self._paths)
            self.dim = int(self._load_path(self._paths[0]).shape[0])
        self._rows = np.arange(n_rows)
        self._checked_finite = False
        if labels is not None:
            labels = _as_numpy(labels) if isinstance(labels, torch.Tensor) else np.asarray(labels)
        self.labels = None if labels is None else check_labels(labels, n_rows, name)

    # -- size and views -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    @property
    def is_lazy(self) -> bool:
        """True when rows live in per-sample files rather than an array."""
        return self._paths is not None

    @property
    def nbytes_float32(self) -> int:
        return len(self) * self.dim * 4

    def subset(self, indices: np.ndarray) -> ActivationDataset:
        """A view of the given rows (indices into this dataset); no activations are copied."""
        view = copy.copy(self)
        view._rows = self._rows[np.asarray(indices)]
        if self.labels is not None:
            view.labels = self.labels[np.asarray(indices)]
        return view

    # -- reading --------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A DataLoader batch read in one call (not one read per item), as (x, y) samples.

        y is NaN for unlabelled data. The samples are views of one block, so stacking them is cheap.
        """
        idx = np.asarray(indices)
        x = torch.from_numpy(self.rows(idx))
        if self.labels is None:
            y = torch.full((len(idx),), float("nan"))
        else:
            y = torch.from_numpy(self.labels[idx].astype(np.float32))
        return list(zip(x, y, strict=True))

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Activations of the given rows as float32 (k, D)."""
        base = self._rows[indices]
        if self._paths is not None:
            out = np.empty((len(base), self.dim), dtype=np.float32)
            for i, row in enumerate(base):
                out[i] = self._load_path(self._paths[row]).numpy()
            return out
        assert self._array is not None
        # Memory-mapped arrays read fastest in ascending order; gather sorted, then restore the order.
        order = np.argsort(base, kind="stable")
        sorted_rows = base[order]
        block = self._array[sorted_rows] if self._array.ndim == 2 else self._array[sorted_rows, self.layer]
        out = np.empty((len(base), self.dim), dtype=np.float32)
        out[order] = block
        return out

    def blocks(self, block_rows: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
        """Consecutive float32 blocks of rows, in dataset order."""
        for start in range(0, len(self), block_rows):
            yield self.rows(np.arange(start, min(start + block_rows, len(self))))

    def materialize(self) -> np.ndarray:
        """All rows as one float32 array (N, D)."""
        out = np.empty((len(self), self.dim), dtype=np.float32)
        start = 0
        for block in self.blocks():
            out[start : start + len(block)] = block
            start += len(block)
        return out

    def count_nonfinite_rows(self) -> int:
        return sum(int((~np.isfinite(block)).any(axis=1).sum()) for block in self.blocks())

    def check_finite(self) -> None:
        """Raise naming the data and the count of rows with NaN or Inf; a subset of checked data is not re-read."""
        if self._checked_finite:
            return
        bad = self.count_nonfinite_rows()
        if bad:
            raise ProbeLabError(f"{self.name}: {bad} of {len(self)} rows contain NaN or Inf")
        self._checked_finite = True

    def _load_path(self, path: Path) -> torch.Tensor:
        tensor = load_tensor_file(path)
        if tensor.ndim == 2 and tensor.shape[0] == 1 and self.layer is None:
            tensor = tensor[0]
        if tensor.ndim == 2:
            if self.layer is None:
                raise ProbeLabError(f"{path}: holds {tensor.shape[0]} layers of activations; set data.layer")
            if not -tensor.shape[0] <= self.layer < tensor.shape[0]:
                raise ProbeLabError(f"{path}: data.layer={self.layer} is out of range for {tensor.shape[0]} layers")
            tensor = tensor[self.layer]
        if tensor.ndim != 1:
            raise ProbeLabError(f"{path}: expected a tensor of shape (D,) or (L, D), got {tuple(tensor.shape)}")
        if hasattr(self, "dim") and tensor.shape[0] != self.dim:
            raise ProbeLabError(f"{path}: has {tensor.shape[0]} values, the other samples have {self.dim}")
        return tensor.float()


def load_tensor_file(path: Path) -> torch.Tensor:
    """One plain tensor from a file, refusing anything that would need unpickling of objects."""
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


def check_labels(labels: np.ndarray, n_rows: int, name: str) -> np.ndarray:
    """Labels as int64 0/1 of length n_rows, or a one-line error naming `name`."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        labels = labels.reshape(-1) if labels.ndim == 2 and 1 in labels.shape else labels
    if labels.ndim != 1:
        raise ProbeLabError(f"{name}: labels must be one-dimensional, got shape {labels.shape}")
    if len(labels) != n_rows:
        raise ProbeLabError(f"{name}: {n_rows} activation rows but {len(labels)} labels")
    if labels.dtype.kind not in "biuf":
        raise ProbeLabError(f"{name}: labels must be 0/1 numbers, got dtype {labels.dtype}")
    values = np.unique(labels)
    if labels.dtype.kind == "f" and not np.isfinite(values).all():
        raise ProbeLabError(f"{name}: labels contain NaN or Inf")
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(str(v) for v in values[~np.isin(values, (0, 1))][:5])
        raise ProbeLabError(f"{name}: labels must be binary 0/1, found {shown}")
    return labels.astype(np.int64)


def natural_sorted(paths: Sequence[Path]) -> list[Path]:
    """sample_2 before sample_10."""

    def key(path: Path) -> list[object]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]

    return sorted(paths, key=key)


def _as_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return values.float().numpy() if values.is_floating_point() else values.numpy()
    return values


def _array_dim(array: np.ndarray, layer: int | None, name: str) -> int:
    if array.dtype.kind != "f":
        raise ProbeLabError(f"{name}: activations must be floating point, got dtype {array.dtype}")
    if array.ndim == 2:
        if layer not in (None, 0, -1):
            raise ProbeLabError(
                f"{name}: data.layer={layer} given but the activations have no layer axis (shape {array.shape})"
            )
        return int(array.shape[1])
    if array.ndim == 3:
        if layer is None:
            raise ProbeLabError(
                f"{name}: activations of shape {array.shape} hold {array.shape[1]} layers; set data.layer"
            )
        if not -array.shape[1] <= layer < array.shape[1]:
            raise ProbeLabError(f"{name}: data.layer={layer} is out of range for {array.shape[1]} layers")
        return int(array.shape[2])
    raise ProbeLabError(f"{name}: activations must have shape (N, D) or (N, L, D), got {array.shape}")
