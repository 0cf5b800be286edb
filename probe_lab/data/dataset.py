"""`ActivationDataset`: activations with binary labels, from an array, per-sample files or a store.

Rows live in a `RowTable` (probe_lab.data.tables): an in-memory or memory-mapped array (N×D, or
N×L×D with a layer picked), per-sample tensor files read with `torch.load(weights_only=True)`, or
an activation store's shards, or a tensor already on a GPU (`DeviceTable`). A dataset can be
narrowed to a subset of rows without copying (`subset`) and read in contiguous blocks, as float32
(`rows`, `blocks`), in its storage dtype (`read`, `to_tensor`) or onto a device (`to_device`,
`on_device`): that is how statistics, finiteness checks, streaming and scoring move
through data larger than memory.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from probe_lab.data.h2d import copy_to_device
from probe_lab.data.tables import (
    ArrayTable,
    DeviceTable,
    MappedFile,
    RowTable,
    TensorFileTable,
    host_table,
    nonfinite_rows,
)
from probe_lab.errors import ProbeLabError

__all__ = ["ActivationDataset", "check_labels"]

ArrayLike = np.ndarray | torch.Tensor
# Blocks of rows read at once by the streaming passes (statistics, scoring, checks): large enough
# for sequential reads, small enough that their float32/float64 working copies stay a few tens of MB.
BLOCK_BYTES = 16 << 20
# Host-to-device loads (probe_lab.data.h2d): reads of this size, `LOAD_THREADS` at a time, each into
# its own pinned buffer.
LOAD_CHUNK_BYTES = 32 << 20
LOAD_THREADS = 4


class ActivationDataset(Dataset):
    """Rows of activations (float vectors of width `dim`) with optional 0/1 labels.

    activations: an array (N, D) or (N, L, D) (then `layer` picks L), a sequence of paths to
    per-sample tensor files of shape (D,) or (L, D), or a `RowTable`. A tensor on an accelerator stays
    there, in its dtype (float32, float16 or bfloat16). labels: (N,) of 0/1, or None
    (scoring only). `name` is how error messages refer to the data (a setting or a file).
    `device` is accepted for the seed guide's signature and ignored: the rows stay where they are
    (a DataLoader's user moves batches; `on_device` holds the data on a GPU).
    Items are (x float32 tensor (D,), y float32 scalar); `__getitems__` reads whole batches at once.
    `groups` (N,), when set, says which sample each row comes from (rows of one text's tokens): splits
    then keep a sample's rows together, and test metrics are also given per sample.
    """

    def __init__(
        self,
        activations: ArrayLike | MappedFile | RowTable | Sequence[str | Path],
        labels: ArrayLike | Sequence[int] | None = None,
        *,
        layer: int | None = None,
        name: str = "activations",
        device: str | None = None,
    ) -> None:
        del device  # the seed guide's argument; see the class docstring
        self.name = name
        self.layer = layer
        if isinstance(activations, RowTable):
            self.table = activations
        elif isinstance(activations, torch.Tensor) and activations.device.type != "cpu":
            try:  # float64 is held as float32, as it is read from arrays
                tensor = activations.detach()
                self.table = DeviceTable(tensor.float() if tensor.dtype == torch.float64 else tensor)
            except ValueError as err:
                raise ProbeLabError(f"{name}: {err}") from None
        elif isinstance(activations, (np.ndarray, torch.Tensor, MappedFile)):
            array = _as_numpy(activations) if isinstance(activations, torch.Tensor) else activations
            _check_array(array, name)
            self.table = ArrayTable(array)
        else:
            paths = [Path(p) for p in activations]
            if not paths:
                raise ProbeLabError(f"{name}: no activation files given")
            self.table = TensorFileTable(paths)
        self._check_layer()
        self.dim = self.table.dim
        self._rows = np.arange(self.table.n_rows)
        self._checked_finite = False
        if labels is not None:
            labels = _as_numpy(labels) if isinstance(labels, torch.Tensor) else np.asarray(labels)
        self.labels = None if labels is None else check_labels(labels, self.table.n_rows, name)
        self.groups: np.ndarray | None = None

    # -- size and views -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    @property
    def device(self) -> torch.device:
        """Where the rows are held: a GPU for data loaded there (`on_device`), else the CPU."""
        return self.table.device if isinstance(self.table, DeviceTable) else torch.device("cpu")

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype rows are stored in (float32, float16 or bfloat16); `read` returns it."""
        return self.table.dtype

    def nbytes(self, dtype: torch.dtype | None = None) -> int:
        """Bytes of all rows held as one tensor of `dtype` (default: the storage dtype)."""
        return len(self) * self.dim * (dtype or self.storage_dtype).itemsize

    def subset(self, indices: np.ndarray) -> ActivationDataset:
        """A view of the given rows (indices into this dataset); no activations are copied."""
        view = copy.copy(self)
        view._rows = self._rows[np.asarray(indices)]
        if self.labels is not None:
            view.labels = self.labels[np.asarray(indices)]
        if self.groups is not None:
            view.groups = self.groups[np.asarray(indices)]
        return view

    def joined(self, other: ActivationDataset) -> ActivationDataset:
        """This dataset's rows followed by `other`'s (labels and groups alike), as one dataset.

        Two views of one table (the splits of a run read from one source) stay a view, nothing
        copied; otherwise both are copied, in their storage dtype, into one tensor where this
        dataset's rows live (the splits of a run held on a GPU, each a tensor of its own).
        """
        if other.dim != self.dim:
            raise ProbeLabError(f"{other.name}: {other.dim} dims cannot join {self.name}'s {self.dim}")
        if other.table is self.table and other.layer == self.layer:
            both = copy.copy(self)
            both._rows = np.concatenate([self._rows, other._rows])
        else:
            device = self.device
            rows = torch.cat([self.to_device(device), other.to_device(device).to(self.storage_dtype)])
            table = DeviceTable(rows) if device.type != "cpu" else host_table(rows)
            both = ActivationDataset(table, name=self.name)
        both._checked_finite = self._checked_finite and other._checked_finite
        both.labels = (
            None if self.labels is None or other.labels is None else np.concatenate([self.labels, other.labels])
        )
        both.groups = (
            None if self.groups is None or other.groups is None else np.concatenate([self.groups, other.groups])
        )
        return both

    def segments(self, max_rows: int) -> list[np.ndarray]:
        """This dataset's row indices cut into runs of at most `max_rows` that ascend in storage and
        stay within one storage segment (shard): the unit of one large contiguous read."""
        order = np.argsort(self._rows, kind="stable")
        cuts = np.searchsorted(self._rows[order], self.table.boundaries[1:-1])
        runs: list[np.ndarray] = []
        for run in np.split(order, cuts):
            runs.extend(run[i : i + max_rows] for i in range(0, len(run), max_rows))
        return [run for run in runs if len(run)]

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

    def read(self, indices: np.ndarray) -> torch.Tensor:
        """Activations of the given rows (indices into this dataset) as (k, D) in the storage dtype."""
        base = self._rows[np.asarray(indices)]
        if len(base) < 2 or bool(np.all(base[1:] >= base[:-1])):  # already in storage order
            return self.table.read(base, self.layer)
        # Storage reads fastest in ascending order; gather sorted, then restore the order asked for.
        order = np.argsort(base, kind="stable")
        block = self.table.read(base[order], self.layer)
        if np.all(order[1:] > order[:-1]):
            return block
        out = torch.empty_like(block)
        out[torch.from_numpy(order)] = block
        return out

    def read_into(self, indices: np.ndarray, out: torch.Tensor) -> None:
        """`read` written into `out` (k, D) of the storage dtype, with no intermediate copy when the
        rows ascend in storage (as `segments` gives them)."""
        if out.dtype != self.storage_dtype:
            raise ValueError(f"read_into needs a {self.storage_dtype} tensor, got {out.dtype}")
        base = self._rows[np.asarray(indices)]
        if np.all(base[1:] > base[:-1]):
            self.table.read_into(base, self.layer, out)
        else:
            out.copy_(self.read(indices))

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Activations of the given rows as float32 (k, D), on the host."""
        return self.read(indices).float().cpu().numpy()

    @property
    def block_rows(self) -> int:
        """Rows per block of the streaming passes: about BLOCK_BYTES of float32."""
        return max(1, BLOCK_BYTES // (4 * self.dim))

    def blocks(self, block_rows: int | None = None) -> Iterator[np.ndarray]:
        """Consecutive float32 blocks of rows, in dataset order."""
        step = block_rows or self.block_rows
        for start in range(0, len(self), step):
            yield self.rows(np.arange(start, min(start + step, len(self))))

    def materialize(self) -> np.ndarray:
        """All rows as one float32 array (N, D)."""
        return self.to_tensor(torch.float32).numpy()

    def to_tensor(self, dtype: torch.dtype | None = None, *, pin_memory: bool = False) -> torch.Tensor:
        """All rows as one (N, D) tensor of `dtype` (default: the storage dtype), filled block by
        block so that no second full-size copy is ever held."""
        out = torch.empty((len(self), self.dim), dtype=dtype or self.storage_dtype, pin_memory=pin_memory)
        for start in range(0, len(self), self.block_rows):
            stop = min(start + self.block_rows, len(self))
            out[start:stop] = self.read(np.arange(start, stop))
        return out

    def to_device(self, device: torch.device | str) -> torch.Tensor:
        """All rows as one (N, D) tensor in the storage dtype on `device`.

        Rows already there are returned as they are (a view when the dataset is not a subset); rows
        a table makes on a device (drawn rows) are made there. From the host, chunks are read by
        LOAD_THREADS threads into pinned buffers, each copied to the device asynchronously while the
        next reads go on (probe_lab.data.h2d), so no full-size host copy is ever made.
        """
        device = torch.device(device)
        if device.type == "cpu":
            return self.to_tensor()
        if isinstance(self.table, DeviceTable) and _same_device(self.table.device, device):
            return self.table.read(self._rows, self.layer)  # all rows, in this dataset's order
        made = self.table.read_onto(self._rows, self.layer, device)
        if made is not None:
            return made
        out = torch.empty((len(self), self.dim), dtype=self.storage_dtype, device=device)
        chunk_rows = max(1, LOAD_CHUNK_BYTES // (self.dim * self.storage_dtype.itemsize))

        def read(rows: torch.Tensor, start: int, stop: int) -> None:
            self.read_into(np.arange(start, stop), rows)

        copy_to_device(out, read, chunk_rows=chunk_rows, slots=LOAD_THREADS, threads=LOAD_THREADS)
        return out

    def on_device(self, device: torch.device | str) -> ActivationDataset:
        """This dataset held on `device` as a tensor of its own (read once, in its storage dtype):
        later reads, scoring and training stay there. A subset of data already on that device is
        copied out of it, so the larger tensor can be freed."""
        device = torch.device(device)
        if isinstance(self.table, DeviceTable) and _same_device(self.table.device, device):
            whole = self.table.layers is None and np.array_equal(self._rows, np.arange(self.table.n_rows))
            if whole:
                return self
        known = self.nonfinite_mask() if self.table.nonfinite_known else None
        table = DeviceTable(self.to_device(device), nonfinite=known)
        moved = ActivationDataset(table, self.labels, name=self.name)
        moved._checked_finite = self._checked_finite
        moved.groups = self.groups
        return moved

    # -- finiteness -----------------------------------------------------------------------------
    def nonfinite_mask(self) -> np.ndarray:
        """bool (N,): rows holding NaN or Inf — from the store's scan when there was one, else read."""
        known = self.table.nonfinite
        if known is not None:
            mask = known[self._rows]
            return mask[:, self.layer] if mask.ndim == 2 else mask
        mask = np.zeros(len(self), dtype=bool)
        for start in range(0, len(self), self.block_rows):
            stop = min(start + self.block_rows, len(self))
            mask[start:stop] = nonfinite_rows(self.read(np.arange(start, stop)), self.storage_dtype)
        return mask

    def count_nonfinite_rows(self) -> int:
        return int(self.nonfinite_mask().sum())

    def check_finite(self) -> None:
        """Raise naming the data and the count of rows with NaN or Inf; a subset of checked data is not re-read."""
        if self._checked_finite:
            return
        bad = self.count_nonfinite_rows()
        if bad:
            raise ProbeLabError(
                f"{self.name}: {bad} of {len(self)} rows contain NaN or Inf (data.drop_nonfinite=true drops them)"
            )
        self._checked_finite = True

    def drop_nonfinite(self) -> tuple[ActivationDataset, int]:
        """(this dataset without its NaN/Inf rows, how many rows were dropped)."""
        mask = self.nonfinite_mask()
        kept = self.subset(np.flatnonzero(~mask))
        kept._checked_finite = True
        return kept, int(mask.sum())

    @property
    def layers(self) -> int | None:
        """How many layers each row holds (L of N×L×D; for tensor files, the first file's), None for N×D."""
        return self.table.layers

    def _check_layer(self) -> None:
        """Refuse a layer the rows cannot give; a negative layer is stored as its index in [0, L)."""
        layers = self.table.layers
        if isinstance(self.table, TensorFileTable):
            # each file says how many layers it holds and is checked as it is read; the first file's
            # count turns a negative layer into an index
            if layers is not None and self.layer is not None and -layers <= self.layer < 0:
                self.layer %= layers
            return
        if layers is None:
            if self.layer is not None:
                raise ProbeLabError(
                    f"{self.name}: data.layer={self.layer} given but the activations are N×D, without a layer "
                    "axis; leave data.layer unset"
                )
        elif self.layer is None:
            raise ProbeLabError(f"{self.name}: activations hold {layers} layers; set data.layer")
        elif not -layers <= self.layer < layers:
            raise ProbeLabError(f"{self.name}: data.layer={self.layer} is out of range for {layers} layers")
        else:
            self.layer %= layers


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


def _same_device(held: torch.device, wanted: torch.device) -> bool:
    """cuda and cuda:0 name the same GPU when 0 is the current one."""
    if held.type != wanted.type:
        return False
    current = torch.cuda.current_device() if held.type == "cuda" else 0
    return (current if held.index is None else held.index) == (current if wanted.index is None else wanted.index)


def _as_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return values.float().numpy() if values.is_floating_point() else values.numpy()
    return values


def _check_array(array: np.ndarray | MappedFile, name: str) -> None:
    if array.dtype.kind != "f":
        raise ProbeLabError(f"{name}: activations must be floating point, got dtype {array.dtype}")
    if len(array.shape) not in (2, 3):
        raise ProbeLabError(f"{name}: activations must have shape (N, D) or (N, L, D), got {array.shape}")
