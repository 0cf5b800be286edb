"""`StreamedBatches`: minibatches read from disk in large contiguous reads, shuffled without random I/O.

Each epoch walks the dataset's segments (runs of up to `read_rows` rows that ascend in storage and
stay within one shard; see `ActivationDataset.segments`) in a seeded random order, fills a buffer of
`buffer_reads` such reads, shuffles the rows inside it and cuts it into batches. Worker processes
split the segments between them, so reading, conversion and the host-to-device copy of earlier
batches overlap (the DataLoader's prefetching and pinned memory do the rest).

A DataLoader re-iterates this dataset every epoch; with persistent workers each worker keeps its copy,
so the epoch counter that varies the shuffle lives here rather than in a sampler.
"""

from __future__ import annotations

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
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        rng = np.random.default_rng([self.seed, epoch])
        segments = self.dataset.segments(self.read_rows)
        order = rng.permutation(len(segments)) if self.shuffle else np.arange(len(segments))
        worker = get_worker_info()
        if worker is not None:
            order = order[worker.id :: worker.num_workers]
        labels = self.dataset.labels
        assert labels is not None
        pending_x: list[torch.Tensor] = []
        pending_y: list[torch.Tensor] = []
        for position, index in enumerate(order, start=1):
            segment = segments[index]
            pending_x.append(self.dataset.read(segment).to(self.dtype))
            pending_y.append(torch.from_numpy(labels[segment].astype(np.float32)))
            if position % self.buffer_reads and position != len(order):
                continue
            x, y = torch.cat(pending_x), torch.cat(pending_y)
            if self.shuffle:
                permutation = torch.from_numpy(rng.permutation(len(y)))
                x, y = x[permutation], y[permutation]
            whole = len(y) - len(y) % self.batch_size if position != len(order) else len(y)
            for start in range(0, whole, self.batch_size):
                yield x[start : start + self.batch_size], y[start : start + self.batch_size]
            # Rows short of a full batch wait for the next buffer, so batches stay full until the end.
            pending_x, pending_y = [x[whole:]], [y[whole:]]
