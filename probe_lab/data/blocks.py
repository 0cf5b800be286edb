"""A training split read block by block, once per evaluation of a full-batch objective, when it is not
held whole on the training device.

`SplitBlocks` yields the split's rows in storage order as (x, y) blocks on the training device, every
pass the same blocks in the same order, so that every evaluation sums the same numbers in the same
order. The first blocks, up to `device_bytes`, are read once and kept on the device (the part of the
split the device's budget holds); the rest has one of two homes:
- `streamed`: each pass reads the rows from where they are stored (memory-mapped files, a store's
  shards, per-sample files), `threads` reader threads reading ahead in large contiguous reads (with
  CUDA, into pinned memory, then copied to the GPU without blocking);
- `host` (a GPU fit): the split is read once into host memory, in blocks of their own (no allocation
  is rounded up to a power of two), each block page-locked by the thread that read it
  (`page_locked`), and each pass copies them to the GPU.

On a GPU, blocks from the host (pinned, either home) are copied on a side stream into two device
buffers used in turn: the copy of the next block runs while the current one is computed on, and a
buffer is written again only after the computation on its previous block (`_copied_to_device`).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.page_locked import page_locked
from probe_lab.data.streaming import put_unless_stopped


class SplitBlocks:
    """(x (k, D) in the stored dtype, y (k,) float32) blocks of `dataset` on `device`, in storage order;
    iterate once per pass. Blocks are runs of at most `read_rows` rows (`ActivationDataset.segments`).

    On a GPU, blocks beyond the device's part come as views of two device buffers that the next copies
    reuse once the consumer asks for the block after next: a consumer that holds a block after asking
    for the next one (Lightning's loops fetch one batch ahead) needs `reuse_device_buffers=False`, and
    gets each block in memory of its own."""

    def __init__(
        self,
        dataset: ActivationDataset,
        device: torch.device,
        *,
        read_rows: int,
        threads: int = 2,
        prefetch: int = 2,
        hold_on_host: bool = False,
        device_bytes: int = 0,
        reuse_device_buffers: bool = True,
    ) -> None:
        if dataset.labels is None:
            raise ValueError("SplitBlocks needs labelled data")
        self.dataset = dataset
        self.device = device
        self.segments = dataset.segments(max(1, read_rows))
        self.threads = max(1, threads)
        self.prefetch = max(1, prefetch)
        self.pin = device.type == "cuda"
        self.reuse_device_buffers = reuse_device_buffers
        labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.float32))
        self.labels = [labels[segment].to(device) for segment in self.segments]  # small: kept where they are used
        row_bytes = dataset.dim * dataset.storage_dtype.itemsize
        kept = int(np.searchsorted(np.cumsum([len(s) * row_bytes for s in self.segments]), device_bytes, "right"))
        kept_segments = self.segments[:kept]
        self.on_device: list[torch.Tensor] = []
        if kept_segments:  # read once, the way whole splits are loaded onto the device
            whole = dataset.subset(np.concatenate(kept_segments)).to_device(device)
            self.on_device = list(torch.split(whole, [len(segment) for segment in kept_segments]))
        self.rest = range(kept, len(self.segments))
        self.host: list[torch.Tensor] | None = None
        if hold_on_host:
            self.host = self._held_on_host()

    @property
    def rows(self) -> int:
        return len(self.dataset)

    @property
    def device_rows(self) -> int:
        """Rows kept on the device."""
        return sum(len(block) for block in self.on_device)

    def rows_at(self, positions: np.ndarray) -> torch.Tensor:
        """The split's rows at `positions` (indices into the dataset), in that order, on the device:
        taken from the blocks held on the device or in host memory (no read of storage), and read from
        storage only for the rows of a streamed split's other blocks."""
        sizes = [len(segment) for segment in self.segments]
        order = np.concatenate(self.segments) if self.segments else np.zeros(0, dtype=np.int64)
        place = np.empty(len(order), dtype=np.int64)
        place[order] = np.arange(len(order))  # position → its index in block order
        at = place[np.asarray(positions, dtype=np.int64)]
        block_of = np.searchsorted(np.cumsum(sizes), at, side="right")
        offset = at - (np.cumsum(sizes) - sizes)[block_of]
        out = torch.empty((len(at), self.dataset.dim), dtype=self.dataset.storage_dtype, device=self.device)
        kept = len(self.on_device)
        for block in np.unique(block_of):
            mine = np.flatnonzero(block_of == block)
            where = torch.from_numpy(mine).to(self.device)
            if block < kept:
                rows = self.on_device[block][torch.from_numpy(offset[mine]).to(self.device)]
            elif self.host is not None:
                rows = self.host[block - kept][torch.from_numpy(offset[mine])].to(self.device)
            else:
                rows = self.dataset.read(self.segments[block][offset[mine]]).to(self.device)
            out.index_copy_(0, where, rows)
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from zip(self.on_device, self.labels[: len(self.on_device)], strict=True)
        rest = iter(self.host) if self.host is not None else self._read_ahead(self.rest)
        if self.pin and self.reuse_device_buffers:
            rest = self._copied_to_device(rest)
        for block, labels in zip(rest, self.labels[len(self.on_device) :], strict=True):
            yield block.to(self.device, non_blocking=True), labels

    def _copied_to_device(self, blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Pinned host `blocks` as views of two device buffers, each block's copy queued on the side
        stream one block ahead; the current stream waits for a block's copy before it is yielded."""
        compute = torch.cuda.current_stream(self.device)
        side = _copy_stream(self.device)
        largest = max((len(self.segments[index]) for index in self.rest), default=0) * self.dataset.dim
        buffers: list[torch.Tensor] = []
        released: list[torch.cuda.Event | None] = [None, None]  # each buffer's last use, as queued
        queued: tuple[torch.Tensor, torch.cuda.Event, int] | None = None
        for index, block in enumerate(blocks):
            slot = index % 2
            if len(buffers) <= slot:
                buffers.append(torch.empty(largest, dtype=block.dtype, device=self.device))
                buffers[slot].record_stream(side)  # not reused while a copy into it may be running
            target = buffers[slot][: block.numel()].view(block.shape)
            with torch.cuda.stream(side):
                if released[slot] is not None:
                    side.wait_event(released[slot])
                target.copy_(block, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(side)
            if queued is not None:
                yield from _computed_on(queued, compute, released)
            queued = (target, copied, slot)
        if queued is not None:
            yield from _computed_on(queued, compute, released)

    def _read(self, index: int) -> torch.Tensor:
        segment = self.segments[index]
        out = torch.empty((len(segment), self.dataset.dim), dtype=self.dataset.storage_dtype, pin_memory=self.pin)
        self.dataset.read_into(segment, out)
        return out

    def _held_on_host(self) -> list[torch.Tensor]:
        """The blocks beyond the device's part, read once into host memory, page-locked by their readers.

        The memory is written (zeroed, in parallel by torch) before the reads: fresh pages faulted in by
        the reader threads' copies, beside those threads' faults and releases of the mapped files, made
        the reads several times slower than into memory already touched (BENCHMARKS.md)."""
        dim, dtype = self.dataset.dim, self.dataset.storage_dtype
        landing = {index: torch.zeros((len(self.segments[index]), dim), dtype=dtype) for index in self.rest}

        def read(index: int) -> torch.Tensor:
            block = landing.pop(index)
            self.dataset.read_into(self.segments[index], block)
            return page_locked(block) if self.pin else block

        return list(self._read_ahead(self.rest, read=read))

    def _read_ahead(self, indices: range, read: Callable[[int], torch.Tensor] | None = None) -> Iterator[torch.Tensor]:
        """The blocks of `indices` in order, read by `threads` threads with `read` (default `_read`;
        thread t reads the t-th, the (t + threads)-th, ...), each keeping up to `prefetch` blocks ready;
        a reader's error is raised here."""
        read = read or self._read
        count = len(indices)
        queues: list[queue.Queue] = [queue.Queue(maxsize=self.prefetch) for _ in range(self.threads)]
        stop = threading.Event()

        def produce(part: int) -> None:
            try:
                for position in range(part, count, self.threads):
                    if not put_unless_stopped(queues[part], read(indices[position]), stop):
                        return
            except BaseException as err:  # handed to the consumer, which raises it
                put_unless_stopped(queues[part], err, stop)

        readers = [threading.Thread(target=produce, args=(part,), daemon=True) for part in range(self.threads)]
        for reader in readers:
            reader.start()
        try:
            for position in range(count):
                item = queues[position % self.threads].get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            for reader in readers:
                reader.join(timeout=5)


@functools.cache
def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for host-to-device copies of blocks, kept for the process."""
    return torch.cuda.Stream(device)


def _computed_on(
    queued: tuple[torch.Tensor, torch.cuda.Event, int], compute: torch.cuda.Stream, released: list
) -> Iterator[torch.Tensor]:
    """Yield the copied block once `compute` waits for its copy; when the consumer asks for the next
    one (its work on this block is queued), record that point as the last use of the block's buffer."""
    block, copied, slot = queued
    compute.wait_event(copied)
    yield block
    done = torch.cuda.Event()
    done.record(compute)
    released[slot] = done
