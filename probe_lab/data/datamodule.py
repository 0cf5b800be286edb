"""`ProbeDataModule`: the Lightning view of train / validation splits.

Full-batch mode (L-BFGS) serves the whole training split as one batch, read once and kept resident
on the training device in its stored precision (2 bytes a value for float16/bfloat16 data; data
already there is used in place), and on a GPU the validation split likewise; the probe accumulates in
float32 either way. Minibatch mode (AdamW)
streams batches from disk (`StreamedBatches`): large contiguous reads, shuffled by segment and within
a buffer, seeded, by reader threads that prefetch and gather batches into pinned memory.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.streaming import StreamedBatches


class _WholeSplit(Dataset):
    """One item: the whole split as (X, y) tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


class ProbeDataModule(pl.LightningDataModule):
    """Training and validation batches for `ProbeModule`.

    read_mb: the size of one contiguous read when streaming; shuffle_reads: how many reads are
    shuffled together; num_workers / prefetch_batches: reader threads and how many batches each
    keeps ready. device: where full-batch splits are held (the CPU by default).
    """

    def __init__(
        self,
        train: ActivationDataset,
        val: ActivationDataset,
        *,
        batch_size: int,
        full_batch: bool,
        seed: int = 42,
        num_workers: int = 0,
        read_mb: float = 16.0,
        shuffle_reads: int = 4,
        prefetch_batches: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.train, self.val = train, val
        self.batch_size = batch_size
        self.full_batch = full_batch
        self.dtype = train.storage_dtype  # stored precision, end to end
        self.seed = seed
        self.num_workers = num_workers
        row_bytes = train.dim * train.storage_dtype.itemsize
        self.read_rows = max(1, int(read_mb * 2**20) // row_bytes)
        self.shuffle_reads = shuffle_reads
        self.prefetch_batches = prefetch_batches
        self.device = torch.device(device)
        self._resident: dict[str, _WholeSplit] = {}
        self._streams: dict[str, StreamedBatches] = {}

    def hold_whole(self) -> torch.Tensor:
        """Full-batch mode: read the training split whole onto the device (and, on a GPU, the
        validation split beside it) once, to be reused; returns the training activations."""
        if self._val_beside_train:
            self._whole("val", self.val)
        return self._whole("train", self.train).x

    @property
    def _val_beside_train(self) -> bool:
        """Full batch on a GPU: the validation split is held whole there too."""
        return self.full_batch and self.device.type != "cpu"

    def train_dataloader(self) -> DataLoader:
        if self.full_batch:
            return DataLoader(self._whole("train", self.train), batch_size=None)
        return self._loader("train", self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self._val_beside_train:
            return DataLoader(self._whole("val", self.val), batch_size=None)
        return self._loader("val", self.val, shuffle=False)

    def _whole(self, part: str, dataset: ActivationDataset) -> _WholeSplit:
        if part not in self._resident:
            labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.float32))
            self._resident[part] = _WholeSplit(dataset.to_device(self.device), labels.to(self.device))
        return self._resident[part]

    def _loader(self, part: str, dataset: ActivationDataset, *, shuffle: bool) -> DataLoader:
        # One stream per split for the whole fit: its epoch counter varies the shuffle. Training batches
        # come from `num_workers` reader threads in this process (gathered into pinned memory with
        # CUDA); validation batches are read straight from storage. Rows already on a GPU come as they
        # are read there, so there is nothing to pin.
        pin = torch.cuda.is_available() and dataset.device.type == "cpu"
        if part not in self._streams:
            self._streams[part] = StreamedBatches(
                dataset,
                self.batch_size,
                dtype=self.dtype,
                shuffle=shuffle,
                seed=self.seed,
                read_rows=self.read_rows,
                buffer_reads=self.shuffle_reads,
                threads=self.num_workers if shuffle else 0,
                prefetch=self.prefetch_batches,
                pin_memory=pin,
            )
        threaded = shuffle and self.num_workers > 1
        return DataLoader(self._streams[part], batch_size=None, pin_memory=pin and not threaded)
