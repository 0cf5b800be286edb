"""The one-pass scan of a store: every shard read once, its checksum verified, its NaN/Inf rows found,
and, when asked, every row kept as it is read: copied to a GPU (through probe_lab.data.h2d), or read
straight into a host tensor."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from probe_lab.data.h2d import chunk_ranges, copy_to_device, pinned_buffers
from probe_lab.data.tables import MappedFile, nonfinite_rows
from probe_lab.errors import ProbeLabError
from probe_lab.report.progress import Progress, progress_counter
from probe_lab.store.manifest import Manifest, ShardInfo

SCAN_READ_BYTES = 32 << 20
# Shards scanned at once, at most. A scan that also fills a GPU uses more: hashing runs at 1-2 GB/s a
# core, and the machines that train on GPUs have the fast disks and the cores to keep up.
SCAN_THREADS = 4
SCAN_THREADS_TO_DEVICE = 16
# Reads of a scan that also copies to a GPU: each scanning thread pins two buffers of this size.
SCAN_READ_BYTES_TO_DEVICE = 8 << 20


def scan_shards(
    shards: list[MappedFile],
    manifest: Manifest,
    *,
    verify: bool,
    progress: bool,
    into: torch.Tensor | None = None,
    hold: torch.Tensor | None = None,
) -> np.ndarray:
    """Read every shard once, several at a time in threads; return the rows (and layers) holding
    NaN or Inf, bool (rows,) or (rows, layers). verify: check each shard's checksum. into: a
    (rows, dim) GPU tensor of a single-layer store's dtype, which receives every row as it is read.
    hold: a host tensor (rows, *row_shape) of the store's dtype that the rows are read straight into
    (every layer of a multi-layer store).
    """
    masks: list[np.ndarray] = [np.empty(0)] * len(shards)
    bar = progress_counter(manifest.nbytes, desc="scan store", unit="B", unit_scale=True, enabled=progress)
    starts = np.cumsum([0] + [shard.rows for shard in manifest.shards])

    def scan_one(index: int) -> None:
        span = slice(starts[index], starts[index + 1])
        masks[index] = scan_shard(
            shards[index],
            manifest.shards[index],
            manifest.torch_dtype,
            verify,
            bar,
            into[span] if into is not None else None,
            hold[span] if hold is not None else None,
        )

    threads = min(SCAN_THREADS_TO_DEVICE if into is not None else SCAN_THREADS, os.cpu_count() or 1)
    with bar, ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(scan_one, range(len(shards))))
    return np.concatenate(masks)


def scan_shard(
    shard: MappedFile,
    info: ShardInfo,
    dtype: torch.dtype,
    verify: bool,
    bar: Progress,
    into: torch.Tensor | None = None,
    hold: torch.Tensor | None = None,
) -> np.ndarray:
    """One shard read front to back with plain file reads (so the process's memory stays flat unless
    the rows are held): its NaN/Inf mask, after its checksum was verified (unless not `verify`);
    `into`: its rows on a GPU; `hold`: its rows on the host, read straight there."""
    row_shape = shard.shape[1:]
    row_bytes = int(np.prod(row_shape)) * dtype.itemsize
    digest = hashlib.sha256()
    mask = np.zeros((info.rows, *row_shape[:-1]), dtype=bool)
    with open(shard.path, "rb", buffering=0) as file:
        file.seek(shard.offset)

        def read(rows: torch.Tensor, start: int, stop: int) -> None:
            raw = rows.view(torch.uint8).numpy().reshape(-1)
            _read_exactly(file, memoryview(raw), shard.path)
            if verify:
                digest.update(raw)
            mask[start:stop] = nonfinite_rows(rows, dtype)
            bar.update(len(raw))

        if into is None:
            chunk_rows = max(1, SCAN_READ_BYTES // row_bytes)
            buffer = torch.empty((chunk_rows, *row_shape), dtype=dtype) if hold is None else None
            for start, stop in chunk_ranges(info.rows, chunk_rows):
                read(buffer[: stop - start] if buffer is not None else hold[start:stop], start, stop)
        else:
            chunk_rows = max(1, SCAN_READ_BYTES_TO_DEVICE // row_bytes)
            buffers = _thread_pinned_buffers(chunk_rows * row_bytes)
            # Each shard's copies run on a stream of their own, beside the other scanning threads'.
            stream = torch.cuda.Stream(into.device)
            copy_to_device(into, read, chunk_rows=chunk_rows, slots=len(buffers), buffers=buffers, stream=stream)
    if verify and digest.hexdigest() != info.sha256:
        raise ProbeLabError(f"{shard.path}: checksum mismatch; the shard is corrupt or changed since it was written")
    return mask


def _read_exactly(file: io.RawIOBase, view: memoryview, path: Path) -> None:
    """Fill `view` from `file`, or raise naming `path` when the file ends first."""
    filled = 0
    while filled < len(view):  # network file systems may return short reads
        got = file.readinto(view[filled:])
        if not got:
            raise ProbeLabError(f"{path}: truncated while reading")
        filled += got


_thread_buffers = threading.local()


def _thread_pinned_buffers(nbytes: int) -> list[torch.Tensor]:
    """This thread's two pinned read buffers of at least `nbytes` each, reused for every shard it
    scans: pinning memory is slow (it is locked page by page), so each scanning thread pins once."""
    pinned = getattr(_thread_buffers, "pinned", None)
    if pinned is None or pinned[0].numel() < nbytes:
        pinned = _thread_buffers.pinned = pinned_buffers(2, nbytes)
    return pinned
