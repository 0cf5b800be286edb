"""The activation store: activations larger than RAM as contiguous, memory-mappable shards.

A store is a directory:

    manifest.json            format_version, dim, layers, dtype, rows, labels (file, checksum) and
                             shards (file, rows, checksum); written last
    labels.npy               int8 0/1, one per row
    shard-00000.safetensors  one tensor "activations" of shape (rows, D) or (rows, L, D)
    ...

Shards are ordinary safetensors files (any safetensors reader opens them), in float16, bfloat16 or
float32: the stored precision is kept end to end. Each shard's checksum is the SHA-256 of its tensor
bytes; the labels file's is of the whole file. The manifest is written last and atomically, so a
store whose writing was interrupted has no manifest and is never taken for complete.

`ActivationStore.create(path, dim, layers=None, dtype="float16")` returns a `StoreWriter` that appends
batches as they are produced (`.append(x, y)`, `.close()`), holding one batch in memory at a time.
`ActivationStore.open(path)` checks the manifest against the shards (presence, header, size) without
reading them; `scan()` then reads everything once, verifying checksums and finding non-finite rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from probe_lab.data.dataset import ActivationDataset, check_labels
from probe_lab.data.tables import (
    DTYPE_NAMES,
    DTYPES,
    NUMPY_STORAGE,
    ArrayTable,
    DeviceTable,
    MappedFile,
    RowTable,
    nonfinite_rows,
)
from probe_lab.errors import ProbeLabError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.npy"
TENSOR_NAME = "activations"
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
# Room kept at the front of a shard for its safetensors header, written once the shard's row count
# is known; the header is padded with spaces (the format allows it) so the data start 8-byte aligned.
HEADER_BYTES = 256
DEFAULT_SHARD_MB = 256
SCAN_READ_BYTES = 32 << 20
# Shards scanned at once, at most. A scan that also fills a GPU uses more: hashing runs at 1-2 GB/s a
# core, and the machines that train on GPUs have the fast disks and the cores to keep up.
SCAN_THREADS = 4
SCAN_THREADS_TO_DEVICE = 16
# Reads of a scan that also copies to a GPU: each scanning thread pins two buffers of this size.
SINK_READ_BYTES = 8 << 20


@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows: int
    sha256: str  # of the tensor bytes


@dataclass(frozen=True)
class Manifest:
    format_version: int
    dim: int
    layers: int | None
    dtype: str
    rows: int
    labels: str
    labels_sha256: str  # of the labels file
    shards: tuple[ShardInfo, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (self.dim,) if self.layers is None else (self.layers, self.dim)

    @property
    def nbytes(self) -> int:
        return self.rows * int(np.prod(self.row_shape)) * self.torch_dtype.itemsize

    def to_json(self) -> str:
        values = asdict(self)
        values["shards"] = [asdict(shard) for shard in self.shards]
        return json.dumps(values, indent=1) + "\n"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """The manifest at `path`, or a one-line error naming the file and what is wrong with it."""
        try:
            values = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ProbeLabError(f"{path}: not a readable manifest ({str(err).splitlines()[0]})") from None
        try:
            manifest = cls(
                format_version=_field(values, "format_version", int),
                dim=_field(values, "dim", int),
                layers=_field(values, "layers", int, optional=True),
                dtype=_field(values, "dtype", str),
                rows=_field(values, "rows", int),
                labels=_field(values, "labels", str),
                labels_sha256=_field(values, "labels_sha256", str),
                shards=tuple(
                    ShardInfo(_field(s, "file", str), _field(s, "rows", int), _field(s, "sha256", str))
                    for s in _field(values, "shards", list)
                ),
            )
        except (TypeError, AttributeError) as err:
            raise ProbeLabError(f"{path}: malformed manifest ({err})") from None
        if manifest.format_version != FORMAT_VERSION:
            raise ProbeLabError(f"{path}: format_version {manifest.format_version} is not supported ({FORMAT_VERSION})")
        if manifest.dtype not in DTYPES:
            raise ProbeLabError(f"{path}: dtype {manifest.dtype!r} is not one of {', '.join(DTYPES)}")
        if manifest.dim < 1 or (manifest.layers is not None and manifest.layers < 1) or not manifest.shards:
            raise ProbeLabError(f"{path}: malformed manifest (dim, layers and shards must be positive)")
        if sum(shard.rows for shard in manifest.shards) != manifest.rows:
            held = sum(shard.rows for shard in manifest.shards)
            raise ProbeLabError(f"{path}: its shards hold {held} rows, not the {manifest.rows} it lists")
        for name in [manifest.labels] + [shard.file for shard in manifest.shards]:
            if Path(name).name != name:
                raise ProbeLabError(f"{path}: {name!r} must be a plain file name inside the store")
        return manifest


def _field(values: Any, key: str, kind: type, *, optional: bool = False) -> Any:
    value = values.get(key) if isinstance(values, dict) else None
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{key!r} missing or not a {kind.__name__}")
    return value


class ActivationStore:
    """A complete store opened for reading: its manifest, labels and a table over its shards."""

    def __init__(self, path: Path, manifest: Manifest, labels: np.ndarray, shards: list[MappedFile]) -> None:
        self.path, self.manifest, self.labels = path, manifest, labels
        self._shards = shards

    # -- the API ---------------------------------------------------------------------------------
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
            raise ProbeLabError(f"{root}: no {MANIFEST}; not an activation store, or its writing was interrupted")
        manifest = Manifest.read(manifest_path)
        shards = [_open_shard(root / shard.file, shard, manifest) for shard in manifest.shards]
        labels = _read_labels(root / manifest.labels, manifest)
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
        fused = device is not None and torch.device(device).type == "cuda" and self.layers is None
        target = torch.empty((self.rows, self.dim), dtype=self.dtype, device=device) if fused else None
        table.nonfinite = self.scan(verify=verify, progress=progress, into=target)
        if target is None:
            return dataset
        held = DeviceTable(target, nonfinite=table.nonfinite)
        return ActivationDataset(held, self.labels, name=dataset.name)

    def scan(self, *, verify: bool = True, progress: bool = False, into: torch.Tensor | None = None) -> np.ndarray:
        """Read every shard once, sequentially: verify its checksum (unless `verify=False`) and return
        which rows (and layers) hold NaN or Inf, bool (rows,) or (rows, layers).

        Shards are read with plain file reads, several at a time in threads (hashing and the bit
        tests release the GIL), so the process's memory stays flat. into: a (rows, dim) GPU tensor of
        a single-layer store's dtype, which receives every row as it is read.
        """
        masks: list[np.ndarray] = [np.empty(0)] * len(self._shards)
        bar = tqdm(total=self.manifest.nbytes, unit="B", unit_scale=True, desc="scan store", disable=not progress)
        starts = np.cumsum([0] + [shard.rows for shard in self.manifest.shards])

        def scan_one(index: int) -> None:
            rows = into[starts[index] : starts[index + 1]] if into is not None else None
            masks[index] = _scan_shard(self._shards[index], self.manifest.shards[index], self.dtype, verify, bar, rows)

        threads = min(SCAN_THREADS_TO_DEVICE if into is not None else SCAN_THREADS, os.cpu_count() or 1)
        with bar, ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(scan_one, range(len(self._shards))))
        return np.concatenate(masks)


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


class StoreWriter:
    """Appends batches to a new store; `close()` writes the labels and then the manifest.

    Use as a context manager: leaving the block by an exception writes no manifest, so the
    unfinished store is never read as complete.
    """

    def __init__(
        self, path: Path, dim: int, layers: int | None, dtype: str, *, shard_mb: float, overwrite: bool
    ) -> None:
        if dtype not in DTYPES:
            raise ProbeLabError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if dim < 1 or (layers is not None and layers < 1) or shard_mb <= 0:
            raise ProbeLabError(f"{path}: dim, layers and shard_mb must be positive")
        _prepare_directory(path, overwrite)
        self.path, self.dim, self.layers, self.dtype = path, dim, layers, DTYPES[dtype]
        self.row_shape = (dim,) if layers is None else (layers, dim)
        row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.shard_rows = max(1, int(shard_mb * 2**20) // row_bytes)
        self._shards: list[ShardInfo] = []
        self._labels: list[np.ndarray] = []
        self._file: Any = None
        self._current_name = ""
        self._hash: Any = None
        self._rows_in_shard = 0
        self.rows = 0
        self.closed = False

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, kind: type | None, *rest: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Stop writing and delete what this writer wrote: an unfinished store leaves nothing behind."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for name in [shard.file for shard in self._shards] + [self._current_name, LABELS, f".{MANIFEST}.partial"]:
            if name:
                (self.path / name).unlink(missing_ok=True)
        self.closed = True

    def append(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor | list[int]) -> None:
        """Append rows: x (k, D) or (k, L, D) floats (cast to the store's dtype), y (k,) 0/1 labels."""
        if self.closed:
            raise ProbeLabError(f"{self.path}: the store is closed")
        batch = torch.as_tensor(x).detach().cpu()
        if not batch.is_floating_point():
            raise ProbeLabError(f"{self.path}: activations must be floating point, got {batch.dtype}")
        if tuple(batch.shape[1:]) != self.row_shape:
            raise ProbeLabError(
                f"{self.path}: appended rows have shape {tuple(batch.shape[1:])}, the store holds {self.row_shape}"
            )
        labels = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
        labels = check_labels(labels, len(batch), str(self.path)).astype(np.int8)
        raw = batch.to(self.dtype).contiguous()
        raw = raw.view(torch.int16) if self.dtype == torch.bfloat16 else raw
        values = raw.numpy()
        start = 0
        while start < len(values):
            if self._file is None:
                self._open_shard()
            take = min(len(values) - start, self.shard_rows - self._rows_in_shard)
            chunk = memoryview(np.ascontiguousarray(values[start : start + take])).cast("B")
            self._file.write(chunk)
            self._hash.update(chunk)
            self._rows_in_shard += take
            start += take
            if self._rows_in_shard == self.shard_rows:
                self._finish_shard()
        self._labels.append(labels)
        self.rows += len(values)

    def close(self) -> Manifest:
        """Finish the last shard, write labels.npy, then manifest.json (atomically, last)."""
        if self.closed:
            raise ProbeLabError(f"{self.path}: the store is already closed")
        if self.rows == 0:
            raise ProbeLabError(f"{self.path}: no rows were appended")
        if self._file is not None:
            self._finish_shard()
        with open(self.path / LABELS, "wb") as file:
            np.save(file, np.concatenate(self._labels))
            file.flush()
            os.fsync(file.fileno())
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            dim=self.dim,
            layers=self.layers,
            dtype=DTYPE_NAMES[self.dtype],
            rows=self.rows,
            labels=LABELS,
            labels_sha256=hashlib.sha256((self.path / LABELS).read_bytes()).hexdigest(),
            shards=tuple(self._shards),
        )
        partial = self.path / f".{MANIFEST}.partial"
        with open(partial, "w") as file:
            file.write(manifest.to_json())
            file.flush()
            os.fsync(file.fileno())
        partial.replace(self.path / MANIFEST)
        self.closed = True
        return manifest

    def _open_shard(self) -> None:
        name = f"shard-{len(self._shards):05d}.safetensors"
        self._current_name = name
        self._file = open(self.path / name, "wb")  # noqa: SIM115 (closed in _finish_shard)
        self._file.write(b"\0" * (8 + HEADER_BYTES))
        self._hash = hashlib.sha256()
        self._rows_in_shard = 0

    def _finish_shard(self) -> None:
        rows = self._rows_in_shard
        nbytes = rows * int(np.prod(self.row_shape)) * self.dtype.itemsize
        header = {
            TENSOR_NAME: {
                "dtype": SAFETENSORS_DTYPES[self.dtype],
                "shape": [rows, *self.row_shape],
                "data_offsets": [0, nbytes],
            }
        }
        text = json.dumps(header, separators=(",", ":")).encode()
        self._file.seek(0)
        self._file.write(struct.pack("<Q", HEADER_BYTES) + text.ljust(HEADER_BYTES, b" "))
        self._file.flush()
        os.fsync(self._file.fileno())  # on disk before any manifest can list it
        self._file.close()
        self._shards.append(ShardInfo(self._current_name, rows, self._hash.hexdigest()))
        self._file = None
        self._current_name = ""


def _prepare_directory(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise ProbeLabError(f"{path}: exists and is not a directory")
    existing = list(path.iterdir()) if path.is_dir() else []
    if existing:
        if not overwrite:
            raise ProbeLabError(f"{path}: already exists and is not empty (overwrite=True replaces a store)")
        foreign = [p.name for p in existing if not _is_store_file(p.name)]
        if foreign:
            raise ProbeLabError(f"{path}: holds {foreign[0]!r}, which is not part of a store; refusing to overwrite")
        # The manifest goes first: from here on the old store no longer reads as complete.
        (path / MANIFEST).unlink(missing_ok=True)
        for item in existing:
            item.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)


def _is_store_file(name: str) -> bool:
    return name in (MANIFEST, f".{MANIFEST}.partial", LABELS) or (
        name.startswith("shard-") and name.endswith(".safetensors")
    )


def _open_shard(path: Path, info: ShardInfo, manifest: Manifest) -> MappedFile:
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


def _read_labels(path: Path, manifest: Manifest) -> np.ndarray:
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


def _scan_shard(
    shard: MappedFile, info: ShardInfo, dtype: torch.dtype, verify: bool, bar: tqdm, into: torch.Tensor | None
) -> np.ndarray:
    row_shape = shard.shape[1:]
    row_bytes = int(np.prod(row_shape)) * shard.dtype.itemsize
    rows_per_read = max(1, (SINK_READ_BYTES if into is not None else SCAN_READ_BYTES) // row_bytes)
    sink = _DeviceSink(into, rows_per_read * row_bytes) if into is not None else None
    own_buffer = np.empty(rows_per_read * row_bytes, dtype=np.uint8) if sink is None else None
    digest = hashlib.sha256()
    mask = np.zeros((info.rows, *row_shape[:-1]), dtype=bool)
    try:
        with open(shard.path, "rb", buffering=0) as file:
            file.seek(shard.offset)
            for chunk, start in enumerate(range(0, info.rows, rows_per_read)):
                count = min(rows_per_read, info.rows - start)
                buffer = sink.buffer(chunk) if sink is not None else own_buffer
                view = memoryview(buffer)[: count * row_bytes]
                filled = 0
                while filled < len(view):  # network file systems may return short reads
                    got = file.readinto(view[filled:])
                    if not got:
                        raise ProbeLabError(f"{shard.path}: truncated while reading")
                    filled += got
                if verify:
                    digest.update(view)
                block = buffer[: count * row_bytes].view(shard.dtype).reshape(count, *row_shape)
                mask[start : start + count] = nonfinite_rows(block, dtype)
                if sink is not None:
                    sink.send(chunk, start, count)
                bar.update(len(view))
    finally:  # even a failed shard leaves no copy in flight out of the thread's buffers
        if sink is not None:
            sink.finish()
    if verify and digest.hexdigest() != info.sha256:
        raise ProbeLabError(f"{shard.path}: checksum mismatch; the shard is corrupt or changed since it was written")
    return mask


_thread_buffers = threading.local()


class _DeviceSink:
    """Sends a shard's chunks, as they are read, to their rows of a GPU tensor: two pinned buffers
    per shard, so a chunk is copied (on the sink's own stream) while the next one is read."""

    def __init__(self, rows: torch.Tensor, chunk_bytes: int) -> None:
        self.rows = rows
        # Pinning memory is slow (it is locked page by page): each scanning thread pins its pair once.
        pinned = getattr(_thread_buffers, "pinned", None)
        if pinned is None or pinned[0].numel() < chunk_bytes:
            pinned = _thread_buffers.pinned = [
                torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)
            ]
        self.pinned = pinned
        self.copied = [torch.cuda.Event(), torch.cuda.Event()]
        self.stream = torch.cuda.Stream(rows.device)

    def buffer(self, chunk: int) -> np.ndarray:
        """The buffer to read `chunk` into, once its previous chunk has reached the GPU."""
        self.copied[chunk % 2].synchronize()
        return self.pinned[chunk % 2].numpy()

    def send(self, chunk: int, start: int, count: int) -> None:
        row_bytes = self.rows.shape[1] * self.rows.element_size()
        values = self.pinned[chunk % 2][: count * row_bytes].view(self.rows.dtype).view(count, -1)
        with torch.cuda.stream(self.stream):
            self.rows[start : start + count].copy_(values, non_blocking=True)
            self.copied[chunk % 2].record(self.stream)

    def finish(self) -> None:
        self.stream.synchronize()
