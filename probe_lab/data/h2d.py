"""Host-to-device copies through reused pinned buffers: the one way rows are loaded onto a GPU.

`copy_to_device(out, read, ...)` fills `out`, a CUDA tensor (N, ...), chunk by chunk: `read` fills
a pinned (page-locked) host buffer with a chunk of rows, and the buffer is copied to its rows of
`out` asynchronously while the next chunks are read. A few buffers ("slots") are reused in turn:

- chunk i is read into slot i % slots, and `read` gets the buffer only once the copy of the chunk
  that used it before has finished (a CUDA event recorded after each copy is waited on);
- when `copy_to_device` returns or raises, every copy it started has finished (it synchronizes the
  copy stream), so the buffers may be freed or reused by the caller at once.

The scheduling (`fill_in_chunks`) is plain Python over any `ChunkCopier`; `PinnedCopier` is the CUDA
one, so the order of reads and copies can be checked without a GPU.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import torch

# read(rows, start, stop): fill `rows`, a (stop - start, *row shape) host tensor, with rows start:stop.
ReadRows = Callable[[torch.Tensor, int, int], None]


def chunk_ranges(n_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `chunk_rows` rows covering 0..n_rows in order."""
    return [(start, min(start + chunk_rows, n_rows)) for start in range(0, n_rows, chunk_rows)]


def pinned_buffers(slots: int, nbytes: int) -> list[torch.Tensor]:
    """`slots` pinned host buffers of `nbytes` bytes each (flat uint8)."""
    return [torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(slots)]


def rows_view(buffer: torch.Tensor, count: int, like: torch.Tensor) -> torch.Tensor:
    """The first `count` rows of `like`'s row shape and dtype held in a flat uint8 `buffer` (a view)."""
    row_shape = tuple(like.shape[1:])
    nbytes = count * math.prod(row_shape) * like.element_size()
    return buffer[:nbytes].view(like.dtype).view(count, *row_shape)


class ChunkCopier(Protocol):
    """Where `fill_in_chunks` reads chunks into and how it sends them on."""

    slots: int

    def buffer(self, slot: int, count: int) -> torch.Tensor:
        """The slot's buffer as `count` rows, once the copy out of it sent last has finished."""
        ...

    def send(self, slot: int, start: int, stop: int) -> None:
        """Start copying the slot's buffer to rows start:stop of the destination (returns at once)."""
        ...

    def finish(self) -> None:
        """Wait until every copy sent has finished."""
        ...


class PinnedCopier:
    """Copies chunks from pinned host buffers to rows of `out`, a CUDA tensor, on `stream` (default:
    the current stream of `out`'s device); each copy records an event that `buffer` waits on."""

    def __init__(
        self, out: torch.Tensor, buffers: Sequence[torch.Tensor], stream: torch.cuda.Stream | None = None
    ) -> None:
        self.out = out
        self.buffers = list(buffers)
        self.slots = len(self.buffers)
        self.stream = stream if stream is not None else torch.cuda.current_stream(out.device)
        self.copied = [torch.cuda.Event() for _ in self.buffers]

    def buffer(self, slot: int, count: int) -> torch.Tensor:
        self.copied[slot].synchronize()  # the buffer's previous chunk has reached the device
        return rows_view(self.buffers[slot], count, self.out)

    def send(self, slot: int, start: int, stop: int) -> None:
        values = rows_view(self.buffers[slot], stop - start, self.out)
        with torch.cuda.stream(self.stream):
            self.out[start:stop].copy_(values, non_blocking=True)
            self.copied[slot].record(self.stream)

    def finish(self) -> None:
        self.stream.synchronize()


def fill_in_chunks(copier: ChunkCopier, chunks: Sequence[tuple[int, int]], read: ReadRows, *, threads: int = 0) -> None:
    """Read every chunk (start, stop) into a buffer of `copier` and send it; chunk i uses slot
    i % copier.slots, and a slot's buffer is asked for only after the chunk before in it was sent.

    threads=0: each chunk is read in this thread and sent as soon as it is read, so its copy runs
    while the next chunk is read. threads>0: up to `copier.slots` reads run at once in that many
    threads, and chunks are sent in order as their reads finish. `copier.finish()` always runs, also
    when a read fails, so no copy is left in flight out of the buffers.
    """
    try:
        if threads == 0:
            for index, (start, stop) in enumerate(chunks):
                slot = index % copier.slots
                read(copier.buffer(slot, stop - start), start, stop)
                copier.send(slot, start, stop)
        else:
            _read_in_threads(copier, chunks, read, threads)
    finally:
        copier.finish()


def _read_in_threads(copier: ChunkCopier, chunks: Sequence[tuple[int, int]], read: ReadRows, threads: int) -> None:
    def fill(slot: int, start: int, stop: int) -> tuple[int, int, int]:
        read(copier.buffer(slot, stop - start), start, stop)
        return slot, start, stop

    with ThreadPoolExecutor(max_workers=threads) as pool:
        reads: deque[Future[tuple[int, int, int]]] = deque()
        for index, (start, stop) in enumerate(chunks):
            if len(reads) == copier.slots:  # send the oldest read before its buffer is read into again
                copier.send(*reads.popleft().result())
            reads.append(pool.submit(fill, index % copier.slots, start, stop))
        while reads:
            copier.send(*reads.popleft().result())


def copy_to_device(
    out: torch.Tensor,
    read: ReadRows,
    *,
    chunk_rows: int,
    slots: int,
    threads: int = 0,
    buffers: Sequence[torch.Tensor] | None = None,
    stream: torch.cuda.Stream | None = None,
) -> None:
    """Fill `out` (a CUDA tensor (N, ...)) with its rows as `read` gives them, `chunk_rows` at a time,
    through `slots` pinned buffers (`buffers` when given: at least `slots` of at least one chunk's
    bytes each, kept by the caller for reuse; else allocated for this call). See `fill_in_chunks` for
    `threads`; `stream`: the stream the copies run on (default: the device's current stream).
    Returns once every copy has finished.
    """
    chunks = chunk_ranges(len(out), chunk_rows)
    if not chunks:
        return
    slots = min(slots, len(chunks))
    if buffers is None:
        chunk_bytes = chunk_rows * math.prod(out.shape[1:]) * out.element_size()
        buffers = pinned_buffers(slots, chunk_bytes)
    copier = PinnedCopier(out, buffers[:slots], stream)
    fill_in_chunks(copier, chunks, read, threads=min(threads, slots))
