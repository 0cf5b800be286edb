"""`StreamedBatches`: minibatches read from disk in large contiguous reads, shuffled without random I/O.

Each epoch walks the dataset's segments (runs of up to `read_rows` rows that ascend in storage and
stay within one shard; see `ActivationDataset.segments`) in a seeded random order, reads
`buffer_reads` of them into one reused buffer, and gathers shuffled batches out of it. Without
shuffling (validation) each batch is read straight from storage. Worker processes
split the segments between them, so reading, conversion and the host-to-device copy of earlier
batches overlap (the DataLoader's prefetching and pinned memory do the rest).

A DataLoader re-iterates this dataset every epoch; with persistent workers each worker keeps its copy,
so the epoch counter that varies the shuffle lives here rather than in a sampler. `seek` sets it (and
the batches to skip) for a fit that resumes.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from probe_lab.data.dataset import ActivationDataset


class StreamedBatches(IterableDataset):
    """Yields (x (B, D) in `dtype`, y (B,) float32) batches; the last batch of a worker may be short.

    shuffle=False reads the segments in storage order and keeps rows in order (validation, scoring).
    """

    def __init__(
        self,
        dataset: ActivationDataset,
        batch_size: int,
        *,
        dtype: torch.dtype,
        shuffle: bool,
        seed: int = 0,
        read_rows: int = 8192,
        buffer_reads: int = 4,
        threads: int = 0,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> None:
        if dataset.labels is None:
            raise ValueError("StreamedBatches needs labelled data")
        self.dataset = dataset
        self.batch_size = batch_size
        self.dtype = dtype
        self.shuffle = shuffle
        self.seed = seed
        self.read_rows = max(1, read_rows)
        self.buffer_reads = max(1, buffer_reads)
        self.threads = threads
        self.prefetch = max(1, prefetch)
        self.pin_memory = pin_memory
        self.epoch = 0
        self.skip = 0
        self.read_through = False  # the last epoch begun has been read to its end

    def seek(self, epoch: int, skip: int = 0) -> None:
        """The next iteration is epoch `epoch`'s, from its batch `skip` on (the ones before it are read
        and dropped: a resumed fit sees the batches an uninterrupted one would)."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        skip, self.skip = self.skip, 0
        self.read_through = False
        yield from itertools.islice(self._epoch(epoch), skip, None)
        self.read_through = True

    def _epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        segments = self.dataset.segments(self.read_rows)
        order = rng.permutation(len(segments)) if self.shuffle else np.arange(len(segments))
        worker = get_worker_info()
        if worker is not None:
            order = order[worker.id :: worker.num_workers]
        labels = torch.from_numpy(np.asarray(self.dataset.labels, dtype=np.float32))
        if not self.shuffle:
            for index in order:
                for start in range(0, len(segments[index]), self.batch_size):
                    rows = segments[index][start : start + self.batch_size]
                    yield self.dataset.read(rows), labels[rows]
            return
        if worker is None and self.threads > 1:
            yield from self._threaded(segments, order, labels, epoch)
            return
        yield from self._shuffled(segments, order, labels, rng, shared=worker is not None)

    def _threaded(
        self, segments: list[np.ndarray], order: np.ndarray, labels: torch.Tensor, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Reader threads in this process, each with its share of the reads and its own buffer; their
        batches are taken in turn, so the order of batches is fixed by the seed.

        Threads rather than worker processes: the reads and gathers release the GIL, and a batch made
        here needs no trip through shared memory (with CUDA it is gathered straight into pinned memory).
        """
        queues: list[queue.Queue] = [queue.Queue(maxsize=self.prefetch) for _ in range(self.threads)]
        stop = threading.Event()

        def produce(part: int) -> None:
            rng = np.random.default_rng([self.seed, epoch, part])
            try:
                for batch in self._shuffled(segments, order[part :: self.threads], labels, rng, shared=False):
                    if not put_unless_stopped(queues[part], batch, stop):
                        return
                put_unless_stopped(queues[part], _DONE, stop)
            except BaseException as err:  # handed to the consumer, which raises it
                put_unless_stopped(queues[part], err, stop)

        readers = [threading.Thread(target=produce, args=(part,), daemon=True) for part in range(self.threads)]
        for reader in readers:
            reader.start()
        live = list(range(self.threads))
        try:
            while live:
                for part in list(live):
                    item = queues[part].get()
                    if item is _DONE:
                        live.remove(part)
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        yield item
        finally:
            stop.set()
            for reader in readers:
                reader.join(timeout=5)

    def _shuffled(
        self,
        segments: list[np.ndarray],
        order: np.ndarray,
        labels: torch.Tensor,
        rng: np.random.Generator,
        *,
        shared: bool,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Reads go into one buffer, reused all epoch; each batch is gathered out of it into a tensor of
        its own (a batch handed to the DataLoader must not share memory with the next reads)."""
        capacity = self.buffer_reads * self.read_rows + self.batch_size
        buffer = torch.empty((capacity, self.dataset.dim), dtype=self.dtype)
        buffer_labels = torch.empty(capacity, dtype=torch.float32)
        filled = 0
        for position, index in enumerate(order, start=1):
            segment = segments[index]
            self.dataset.read_into(segment, buffer[filled : filled + len(segment)])
            buffer_labels[filled : filled + len(segment)] = labels[segment]
            filled += len(segment)
            last = position == len(order)
            if position % self.buffer_reads and not last:
                continue
            permutation = torch.from_numpy(rng.permutation(filled))
            whole = filled if last else filled - filled % self.batch_size
            for start in range(0, whole, self.batch_size):
                picked = permutation[start : start + self.batch_size]
                pinned = self.pin_memory and not shared
                x = torch.empty((len(picked), self.dataset.dim), dtype=self.dtype, pin_memory=pinned)
                y = torch.empty(len(picked), dtype=torch.float32, pin_memory=pinned)
                if shared:  # in a worker process, gathered straight into shared memory: sending it copies nothing
                    x.share_memory_()
                    y.share_memory_()
                yield torch.index_select(buffer, 0, picked, out=x), torch.index_select(buffer_labels, 0, picked, out=y)
            # Rows short of a full batch wait at the front of the buffer for the next reads.
            rest = permutation[whole:]
            buffer[: len(rest)] = buffer.index_select(0, rest)
            buffer_labels[: len(rest)] = buffer_labels.index_select(0, rest)
            filled = len(rest)


_DONE = object()


def put_unless_stopped(target: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put, waiting while the consumer is busy; False once the consumer has stopped listening."""
    while not stop.is_set():
        try:
            target.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
