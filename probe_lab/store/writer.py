"""`StoreWriter`: a new store written batch by batch, shard by shard, its manifest last."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe_lab.artifacts import atomic_write_bytes, is_partial_leftover
from probe_lab.data.dataset import check_labels
from probe_lab.data.tables import DTYPE_NAMES, DTYPES
from probe_lab.errors import ProbeLabError
from probe_lab.store.manifest import (
    FORMAT_VERSION,
    JOURNAL,
    LABELS,
    MANIFEST,
    SAFETENSORS_DTYPES,
    SAMPLES,
    TENSOR_NAME,
    Manifest,
    ShardInfo,
    is_store_file,
    shard_name,
)

# Room kept at the front of a shard for its safetensors header, written once the shard's row count
# is known; the header is padded with spaces (the format allows it) so the data start 8-byte aligned.
HEADER_BYTES = 256
DEFAULT_SHARD_MB = 256
WRITE_PIECE_BYTES = 16 << 20  # written and hashed side by side, piece by piece
# Whole shards written at once by `append_shards`, each on a thread of its own (and its hash on
# another): one sha256 runs at ~1.3 GB/s, slower than a fast disk, and only separate shards can be
# hashed side by side.
PARALLEL_SHARDS = min(8, os.cpu_count() or 1)


class StoreWriter:
    """Appends batches to a new store; `close()` writes the labels and then the manifest.

    Use as a context manager: leaving the block by an exception writes no manifest, so the
    unfinished store is never read as complete.
    """

    def __init__(
        self,
        path: Path,
        dim: int,
        layers: int | None,
        dtype: str,
        *,
        shard_mb: float,
        overwrite: bool,
        kept: Sequence[ShardInfo] = (),
        kept_labels: np.ndarray | None = None,
    ) -> None:
        """kept: shards already complete in `path` (an interrupted writing resumed), whose rows have
        `kept_labels`; the writer goes on after them. Without `kept`, `path` is made a new store."""
        if dtype not in DTYPES:
            raise ProbeLabError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if dim < 1 or (layers is not None and layers < 1) or shard_mb <= 0:
            raise ProbeLabError(f"{path}: dim, layers and shard_mb must be positive")
        if kept:
            for name in {p.name for p in path.iterdir()} - {shard.file for shard in kept} - {JOURNAL}:
                if is_store_file(name):  # what an interrupted writer left unfinished
                    (path / name).unlink()
        else:
            prepare_directory(path, overwrite)
        self.path, self.dim, self.layers, self.dtype = path, dim, layers, DTYPES[dtype]
        self.row_shape = (dim,) if layers is None else (layers, dim)
        row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.shard_rows = max(1, int(shard_mb * 2**20) // row_bytes)
        self._shards: list[ShardInfo] = list(kept)
        self._labels: list[np.ndarray] = [] if kept_labels is None else [np.asarray(kept_labels, dtype=np.int8)]
        self._file: Any = None
        self._current_name = ""
        self._hash: Any = None
        self._hasher: ThreadPoolExecutor | None = None
        self._rows_in_shard = 0
        self._writeback_from = 0  # where the shard being written has bytes whose writeback is not started
        self.rows = sum(shard.rows for shard in kept)
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
        self._stop_hasher()
        if self._file is not None:
            self._file.close()
            self._file = None
        for name in [shard.file for shard in self._shards] + [self._current_name, LABELS]:
            if name:
                (self.path / name).unlink(missing_ok=True)
        self.closed = True

    def append(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor | list[int]) -> None:
        """Append rows: x (k, D) or (k, L, D) floats (cast to the store's dtype), y (k,) 0/1 labels."""
        values, labels = self._checked(x, y)
        start = 0
        while start < len(values):
            if self._file is None:
                self._open_shard()
            take = min(len(values) - start, self.shard_rows - self._rows_in_shard)
            chunk = memoryview(np.ascontiguousarray(values[start : start + take])).cast("B")
            self._write_and_hash(chunk)
            self._rows_in_shard += take
            start += take
            if self._rows_in_shard == self.shard_rows:
                self._finish_shard()
        self._labels.append(labels)
        self.rows += len(values)

    def append_shards(
        self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor | list[int], *, durable: bool = True
    ) -> tuple[ShardInfo, ...]:
        """Append rows as shards of their own — full shards, the last one possibly short — as `append`
        followed by `end_shard` would, but writing and hashing up to PARALLEL_SHARDS shards side by side.
        The shard being written, if any, is ended first. Returns this call's shards, once every one is
        on disk; if one fails, none of them is kept.

        durable=False returns once the shards are written and hashed, before they are flushed to the
        disk: the caller makes them durable (`make_durable`) before anything lists them (a journal),
        so flushing them can overlap the next shards' writing. `close` flushes every shard anyway."""
        values, labels = self._checked(x, y)
        self.end_shard()
        first = len(self._shards)
        pieces = [values[start : start + self.shard_rows] for start in range(0, len(values), self.shard_rows)]
        names = [shard_name(first + index) for index in range(len(pieces))]
        with ThreadPoolExecutor(
            max_workers=min(PARALLEL_SHARDS, len(pieces)), thread_name_prefix="probe_lab-store-shard"
        ) as pool:
            written = [
                pool.submit(self._write_whole_shard, name, piece, durable)
                for name, piece in zip(names, pieces, strict=True)
            ]
            failure = next((future.exception() for future in written if future.exception() is not None), None)
        if failure is not None:
            for name in names:
                (self.path / name).unlink(missing_ok=True)
            raise failure
        shards = tuple(future.result() for future in written)
        self._shards.extend(shards)
        self._labels.append(labels)
        self.rows += len(values)
        return shards

    def make_durable(self, shards: Sequence[ShardInfo]) -> None:
        """Flush written shards to the disk (fsync; at once for those already flushed)."""
        for shard in shards:
            fd = os.open(self.path / shard.file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _checked(
        self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor | list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows as a C-contiguous array of the store's dtype — bfloat16 viewed as int16 —, int8 labels)."""
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
        return raw.numpy(), labels

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        """The shards finished so far."""
        return tuple(self._shards)

    def end_shard(self) -> None:
        """Finish the shard being written now, if it holds rows: the next rows start a new one."""
        if self._file is not None and self._rows_in_shard:
            self._finish_shard()

    def interrupt(self) -> None:
        """Stop writing, deleting only the shard being written: finished shards stay for a resume."""
        self._stop_hasher()
        if self._file is not None:
            self._file.close()
            self._file = None
            (self.path / self._current_name).unlink(missing_ok=True)
        self.closed = True

    def close(self, *, samples: np.ndarray | None = None, provenance: dict[str, Any] | None = None) -> Manifest:
        """Finish the last shard, write labels.npy (and `samples`, int64 (N, 2): each row's sample and
        token position, as samples.npy), then manifest.json (atomically, last) with `provenance`."""
        if self.closed:
            raise ProbeLabError(f"{self.path}: the store is already closed")
        if self.rows == 0:
            raise ProbeLabError(f"{self.path}: no rows were appended")
        if self._file is not None:
            self._finish_shard()
        self._stop_hasher()
        self.make_durable(self._shards)  # shards appended with durable=False included
        _write_npy(self.path / LABELS, np.concatenate(self._labels))
        if samples is not None:
            if samples.shape != (self.rows, 2):
                raise ValueError(f"samples must be ({self.rows}, 2), got {samples.shape}")
            _write_npy(self.path / SAMPLES, samples.astype(np.int64))
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            dim=self.dim,
            layers=self.layers,
            dtype=DTYPE_NAMES[self.dtype],
            rows=self.rows,
            labels=LABELS,
            labels_sha256=_sha256(self.path / LABELS),
            shards=tuple(self._shards),
            samples=SAMPLES if samples is not None else None,
            samples_sha256=_sha256(self.path / SAMPLES) if samples is not None else None,
            provenance=provenance,
        )
        atomic_write_bytes(self.path / MANIFEST, manifest.to_json().encode())
        (self.path / JOURNAL).unlink(missing_ok=True)
        self.closed = True
        return manifest

    def _write_and_hash(self, data: memoryview) -> None:
        """Write `data` to the shard and add it to the shard's hash, piece by piece, each piece hashed on
        a thread of its own while it is written (both release the GIL): writing costs the larger of the
        two, not their sum. Returns when both are done with `data`."""
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe_lab-store-hash")
        hashed = []
        for start in range(0, len(data), WRITE_PIECE_BYTES):
            piece = data[start : start + WRITE_PIECE_BYTES]
            hashed.append(self._hasher.submit(self._hash.update, piece))  # one thread: pieces in order
            self._file.write(piece)
        # Writeback is started a whole piece at a time: started for each small append, a page left
        # part-filled would be written again with every append that adds to it.
        written = self._file.tell()
        if written - self._writeback_from >= WRITE_PIECE_BYTES:
            start_writeback(self._file, self._writeback_from, written - self._writeback_from)
            self._writeback_from = written
        for future in hashed:
            future.result()

    def _stop_hasher(self) -> None:
        if self._hasher is not None:
            self._hasher.shutdown(wait=True)
            self._hasher = None

    def _open_shard(self) -> None:
        name = shard_name(len(self._shards))
        self._current_name = name
        self._file = open(self.path / name, "wb")  # noqa: SIM115 (closed in _finish_shard)
        self._file.write(b"\0" * (8 + HEADER_BYTES))
        self._writeback_from = 0
        self._hash = hashlib.sha256()
        self._rows_in_shard = 0

    def _finish_shard(self) -> None:
        rows = self._rows_in_shard
        self._file.seek(0)
        self._file.write(self._header(rows))
        self._file.flush()
        os.fsync(self._file.fileno())  # on disk before any manifest can list it
        self._file.close()
        self._shards.append(ShardInfo(self._current_name, rows, self._hash.hexdigest()))
        self._file = None
        self._current_name = ""

    def _write_whole_shard(self, name: str, values: np.ndarray, durable: bool = True) -> ShardInfo:
        """Shard `name` holding `values`, header first, each piece hashed on a thread of its own while it
        is written (as `_write_and_hash` does); flushed to the disk when this returns if `durable`."""
        data = memoryview(np.ascontiguousarray(values)).cast("B")
        digest = hashlib.sha256()
        with (
            open(self.path / name, "wb") as file,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe_lab-store-hash") as hasher,
        ):
            file.write(self._header(len(values)))
            hashed = []
            for start in range(0, len(data), WRITE_PIECE_BYTES):
                piece = data[start : start + WRITE_PIECE_BYTES]
                hashed.append(hasher.submit(digest.update, piece))  # one thread: pieces in order
                file.write(piece)
                start_writeback(file, 8 + HEADER_BYTES + start, len(piece))
            for future in hashed:
                future.result()
            file.flush()
            if durable:
                os.fsync(file.fileno())
        return ShardInfo(name, len(values), digest.hexdigest())

    def _header(self, rows: int) -> bytes:
        """The 8-byte length and the space-padded safetensors header of a shard of `rows` rows."""
        nbytes = rows * int(np.prod(self.row_shape)) * self.dtype.itemsize
        header = {
            TENSOR_NAME: {
                "dtype": SAFETENSORS_DTYPES[self.dtype],
                "shape": [rows, *self.row_shape],
                "data_offsets": [0, nbytes],
            }
        }
        text = json.dumps(header, separators=(",", ":")).encode()
        return struct.pack("<Q", HEADER_BYTES) + text.ljust(HEADER_BYTES, b" ")


def start_writeback(file: Any, offset: int, length: int) -> None:
    """Ask the kernel to start writing `file`'s bytes [offset, offset + length) to the disk now, without
    waiting for them. With much free memory the kernel would otherwise keep them in the page cache until
    the shard's fsync, leaving the disk idle while the next pieces are written. Linux starts the
    writeback of a range advised POSIX_FADV_DONTNEED (and drops those of its pages already clean, which
    nothing here reads back). Elsewhere, where the advice only drops clean pages, and where the kernel
    refuses it, this does nothing: it is advice, never a reason for a write to fail."""
    if not sys.platform.startswith("linux"):
        return
    file.flush()
    with contextlib.suppress(OSError):
        os.posix_fadvise(file.fileno(), offset, length, os.POSIX_FADV_DONTNEED)


def _write_npy(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as file:
        np.save(file, values)
        file.flush()
        os.fsync(file.fileno())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_directory(path: Path, overwrite: bool) -> None:
    """Make `path` an empty directory for a new store; an old store there is deleted only with
    `overwrite`, and never a directory holding files a store writer does not make."""
    if path.exists() and not path.is_dir():
        raise ProbeLabError(f"{path}: exists and is not a directory")
    existing = list(path.iterdir()) if path.is_dir() else []
    # What a killed writer's atomic write left behind is no part of a store.
    for leftover in [item for item in existing if is_partial_leftover(item.name) and item.is_file()]:
        leftover.unlink(missing_ok=True)
        existing.remove(leftover)
    if existing:
        if not overwrite:
            raise ProbeLabError(f"{path}: already exists and is not empty (overwrite=True replaces a store)")
        foreign = [p.name for p in existing if not is_store_file(p.name)]
        if foreign:
            raise ProbeLabError(f"{path}: holds {foreign[0]!r}, which is not part of a store; refusing to overwrite")
        # The manifest goes first: from here on the old store no longer reads as complete.
        (path / MANIFEST).unlink(missing_ok=True)
        for item in existing:
            item.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
