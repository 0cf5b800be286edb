"""`ActivationStore`: a complete store opened for reading, its shards checked and read as one table."""

from __future__ import annotations

import hashlib
import json
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from probe_lab.data.dataset import ActivationDataset, check_labels
from probe_lab.data.tables import NUMPY_STORAGE, ArrayTable, DeviceTable, MappedFile, RowTable, host_table
from probe_lab.errors import ProbeLabError
from probe_lab.store.manifest import JOURNAL, MANIFEST, SAFETENSORS_DTYPES, TENSOR_NAME, Manifest, ShardInfo
from probe_lab.store.scan import scan_shards
from probe_lab.store.writer import DEFAULT_SHARD_MB, StoreWriter


class ActivationStore:
    """A complete store opened for reading: its manifest, labels and a table over its shards."""

    def __init__(self, path: Path, manifest: Manifest, labels: np.ndarray, shards: list[MappedFile]) -> None:
        self.path, self.manifest, self.labels = path, manifest, labels
        self._shards = shards

    @staticmethod
    def create(
        path: str | Path,
        dim: int,
        layers: int | None = None,
        dtype: str = "float16",
        *,
        shard_mb: float = DEFAULT_SHARD_MB,
        overwrite: bool = False,
    ) -> StoreWriter:
        """A writer for a new store at `path` (refused if one exists there, unless `overwrite`)."""
        return StoreWriter(Path(path), dim, layers, dtype, shard_mb=shard_mb, overwrite=overwrite)

    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        """Open a complete store, checking every shard's presence, header and size (not its bytes)."""
        root = Path(path)
        if not root.is_dir():
            raise ProbeLabError(f"{root}: store directory not found")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            if (root / JOURNAL).is_file():
                raise ProbeLabError(
                    f"{root}: an unfinished extraction (no {MANIFEST} yet); run the same extraction again to resume it"
                )
            raise ProbeLabError(f"{root}: no {MANIFEST}; not an activation store, or its writing was interrupted")
        manifest = Manifest.read(manifest_path)
        shards = [open_shard(root / shard.file, shard, manifest) for shard in manifest.shards]
        labels = read_labels(root / manifest.labels, manifest)
        return cls(root, manifest, labels, shards)

    @property
    def rows(self) -> int:
        return self.manifest.rows

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def layers(self) -> int | None:
        return self.manifest.layers

    @property
    def dtype(self) -> torch.dtype:
        return self.manifest.torch_dtype

    @property
    def provenance(self) -> dict:
        """How the activations were made, as the manifest records it (empty when it does not)."""
        return dict(self.manifest.provenance or {})

    def samples(self) -> np.ndarray | None:
        """int64 (rows, 2): each row's sample index and token position (−1 for a pooled row), checked
        against the manifest's checksum; None for a store that does not record them."""
        if self.manifest.samples is None:
            return None
        path = self.path / self.manifest.samples
        if not path.is_file():
            raise ProbeLabError(f"{path}: samples file listed in {MANIFEST} is missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != self.manifest.samples_sha256:
            raise ProbeLabError(f"{path}: checksum mismatch; the file is corrupt or changed since it was written")
        values = np.load(path, allow_pickle=False)
        if values.shape != (self.rows, 2) or values.dtype != np.int64:
            raise ProbeLabError(f"{path}: expected int64 ({self.rows}, 2), got {values.dtype} {values.shape}")
        return values

    def row_samples(self) -> np.ndarray | None:
        """The sample each row comes from, for a store of several rows per sample (every token of a
        text); None when each row is a sample of its own, or the store does not say."""
        samples = self.samples()
        if samples is None or len(np.unique(samples[:, 0])) == len(samples):
            return None
        return samples[:, 0]

    def table(self) -> ShardedTable:
        return ShardedTable([ArrayTable(shard, self.dtype) for shard in self._shards])

    def dataset(
        self,
        layer: int | None = None,
        *,
        verify: bool = True,
        progress: bool = False,
        device: torch.device | str | None = None,
    ) -> ActivationDataset:
        """The store as an `ActivationDataset` (one layer of a multi-layer store), after one scan.

        device: a GPU to hold the data on. The scan then copies each chunk it reads there, from
        pinned memory while it reads on, so the store is read once in all and the dataset lives on
        the GPU. A multi-layer store stays on the host (its chunks hold every layer); its splits are
        loaded onto the GPU after the scan.
        """
        table = self.table()
        dataset = ActivationDataset(table, self.labels, layer=layer, name=f"data.path ({self.path})")  # checks layer
        dataset.groups = self.row_samples()
        fused = device is not None and torch.device(device).type == "cuda" and self.layers is None
        target = torch.empty((self.rows, self.dim), dtype=self.dtype, device=device) if fused else None
        table.nonfinite = self.scan(verify=verify, progress=progress, into=target)
        if target is None:
            return dataset
        held = DeviceTable(target, nonfinite=table.nonfinite)
        on_device = ActivationDataset(held, self.labels, name=dataset.name)
        on_device.groups = dataset.groups
        return on_device

    def layer_datasets(self, *, verify: bool = True, progress: bool = False) -> list[ActivationDataset]:
        """Each layer of a multi-layer store as a dataset, after one scan that reads every row, every
        layer, into host memory (checksums verified unless not `verify`): the layers share that copy,
        and reading them never touches the store again."""
        if self.layers is None:
            raise ProbeLabError(f"{self.path}: the store's rows hold no layer axis (N×D)")
        rows = torch.empty((self.rows, *self.manifest.row_shape), dtype=self.dtype)
        table = host_table(rows)
        table.nonfinite = scan_shards(self._shards, self.manifest, verify=verify, progress=progress, hold=rows)
        groups = self.row_samples()
        datasets = []
        for layer in range(self.layers):
            dataset = ActivationDataset(table, self.labels, layer=layer, name=f"data.path ({self.path})")
            dataset.groups = groups
            datasets.append(dataset)
        return datasets

    def scan(self, *, verify: bool = True, progress: bool = False, into: torch.Tensor | None = None) -> np.ndarray:
        """Read every shard once, sequentially: verify its checksum (unless `verify=False`) and return
        which rows (and layers) hold NaN or Inf, bool (rows,) or (rows, layers).

        Shards are read with plain file reads, several at a time in threads (hashing and the bit
        tests release the GIL), so the process's memory stays flat. into: a (rows, dim) GPU tensor of
        a single-layer store's dtype, which receives every row as it is read.
        """
        return scan_shards(self._shards, self.manifest, verify=verify, progress=progress, into=into)


class ShardedTable(RowTable):
    """The rows of a store's shards, read as one table; reads never cross a shard unless asked to.

    At most MAX_OPEN_SHARDS shards stay mapped (each mapping holds a file handle): a store of
    thousands of shards must not run out of them.
    """

    MAX_OPEN_SHARDS = 64

    def __init__(self, parts: list[ArrayTable]) -> None:
        self.parts = parts
        self._mapped: OrderedDict[int, None] = OrderedDict()
        self._starts = np.cumsum([0] + [part.n_rows for part in parts])
        self.n_rows = int(self._starts[-1])
        self.dim, self.layers, self.dtype = parts[0].dim, parts[0].layers, parts[0].dtype

    @property
    def boundaries(self) -> np.ndarray:
        return self._starts

    def read(self, rows: np.ndarray, layer: int | None) -> torch.Tensor:
        out = torch.empty((len(rows), self.dim), dtype=self.dtype)
        self.read_into(rows, layer, out)
        return out

    def read_into(self, rows: np.ndarray, layer: int | None, out: torch.Tensor) -> None:
        owner = np.searchsorted(self._starts, rows, side="right") - 1
        cuts = np.flatnonzero(np.diff(owner)) + 1
        for run in np.split(np.arange(len(rows)), cuts):
            if len(run):
                shard = int(owner[run[0]])
                self.parts[shard].read_into(rows[run] - self._starts[shard], layer, out[run[0] : run[-1] + 1])
                self._keep_mapped(shard)

    def _keep_mapped(self, shard: int) -> None:
        self._mapped[shard] = None
        self._mapped.move_to_end(shard)
        while len(self._mapped) > self.MAX_OPEN_SHARDS:
            oldest, _ = self._mapped.popitem(last=False)
            self.parts[oldest].close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mapped": OrderedDict()}


def open_shard(path: Path, info: ShardInfo, manifest: Manifest) -> MappedFile:
    """Map a shard after checking its header and size against the manifest."""
    if not path.is_file():
        raise ProbeLabError(f"{path}: shard listed in {MANIFEST} is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as file:
            (header_len,) = struct.unpack("<Q", file.read(8))
            if header_len > 1 << 20:
                raise ValueError("header length out of range")
            header = json.loads(file.read(header_len))
        entry = header[TENSOR_NAME]
        dtype, shape, offsets = entry["dtype"], [int(s) for s in entry["shape"]], entry["data_offsets"]
    except OSError as err:
        raise ProbeLabError(f"{path}: cannot be read ({err.strerror or err})") from None
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ProbeLabError(f"{path}: not a readable safetensors shard ({err})") from None
    expected_dtype = SAFETENSORS_DTYPES[manifest.torch_dtype]
    if dtype != expected_dtype:
        raise ProbeLabError(f"{path}: holds {dtype} values but {MANIFEST} says {manifest.dtype}")
    expected_shape = [info.rows, *manifest.row_shape]
    if shape != expected_shape:
        raise ProbeLabError(f"{path}: holds shape {tuple(shape)} but {MANIFEST} says {tuple(expected_shape)}")
    data_start = 8 + header_len
    nbytes = info.rows * int(np.prod(manifest.row_shape)) * manifest.torch_dtype.itemsize
    if offsets != [0, nbytes]:
        raise ProbeLabError(f"{path}: its header's data offsets {offsets} do not match its shape")
    if size < data_start + nbytes:
        raise ProbeLabError(f"{path}: truncated ({size} bytes, {data_start + nbytes} expected)")
    return MappedFile(path, data_start, NUMPY_STORAGE[manifest.torch_dtype], tuple(expected_shape))


def read_labels(path: Path, manifest: Manifest) -> np.ndarray:
    """The store's labels, checked against the manifest's checksum and row count."""
    if not path.is_file():
        raise ProbeLabError(f"{path}: labels file listed in {MANIFEST} is missing")
    rows = manifest.rows
    if hashlib.sha256(path.read_bytes()).hexdigest() != manifest.labels_sha256:
        raise ProbeLabError(f"{path}: checksum mismatch; the labels are corrupt or changed since they were written")
    try:
        labels = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ProbeLabError(f"{path}: not a readable .npy array ({str(err).splitlines()[0]})") from None
    if not isinstance(labels, np.ndarray) or labels.ndim != 1:
        raise ProbeLabError(f"{path}: labels must be a one-dimensional array")
    if len(labels) != rows:
        raise ProbeLabError(f"{path}: {len(labels)} labels but the store has {rows} rows")
    return check_labels(labels, rows, str(path))
