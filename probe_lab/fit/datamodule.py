"""`ProbeDataModule`: the Lightning view of the training and validation splits, held as the fit's
`Placement` says.

For full-batch L-BFGS the training split is one batch: held whole on the training device when
resident (read once in its stored dtype; data already there is used in place; on a GPU the
validation split is held whole beside it), else a `SplitBlocks` that the module reads block by block
at every evaluation (from pinned host memory, or from storage). For AdamW it comes as minibatches from
`StreamedBatches`: large contiguous reads, shuffled by segment and within a buffer, seeded, by reader
threads that gather batches (into pinned memory with CUDA). A validation split not held on the device
comes as `SplitBlocks` too after a full-batch fit, and as batches read straight from storage in AdamW's
epochs.

In a data-parallel fit each process's DataModule holds its own contiguous shard of the training and
of the validation rows (`rank` of `processes`), held as the placement says for one shard; the
processes' validation metrics are combined by torchmetrics.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from probe_lab.data.blocks import SplitBlocks
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.streaming import StreamedBatches
from probe_lab.errors import ProbeLabError
from probe_lab.fit.distributed import Shard
from probe_lab.settings import StreamingSettings
from probe_lab.settings.placement import DataHome, Placement

GPU_BLOCK_MB = 256  # a full-batch pass's blocks on a GPU: a power of two, so pinned blocks waste nothing


class _OneItem(Dataset):
    """One item, as it is: a whole split (x, y), or the `SplitBlocks` a full-batch module reads itself."""

    def __init__(self, item: object) -> None:
        self.item = item

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> object:
        return self.item


class _Blocks(IterableDataset):
    """The blocks of a `SplitBlocks`, one batch each, for a DataLoader."""

    def __init__(self, blocks: SplitBlocks) -> None:
        self.blocks = blocks

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.blocks)


class ProbeDataModule(pl.LightningDataModule):
    """Training and validation batches for `ProbeModule`, where `placement` puts them."""

    def __init__(
        self,
        train: ActivationDataset,
        val: ActivationDataset,
        placement: Placement,
        *,
        batch_size: int,
        seed: int = 42,
        streaming: StreamingSettings | None = None,
        rank: int = 0,
        processes: int = 1,
    ) -> None:
        super().__init__()
        self.train_shard = Shard.of_process(len(train), rank, processes)
        self.val_shard = Shard.of_process(len(val), rank, processes)
        if processes > 1:
            for part, shard in (("training", self.train_shard), ("validation", self.val_shard)):
                if not shard.rows:
                    raise ProbeLabError(
                        f"{train.name}: the {part} split has {shard.of} rows, too few for {processes} processes"
                    )
            train = train.subset(np.asarray(self.train_shard.rows))
            val = val.subset(np.asarray(self.val_shard.rows))
        self.train, self.val = train, val
        self.placement = placement
        self.batch_size = batch_size
        self.dtype = train.storage_dtype  # stored precision, end to end
        self.seed = seed
        self.streaming = streaming or StreamingSettings()
        row_bytes = train.dim * train.storage_dtype.itemsize
        self.read_rows = max(1, int(self.streaming.read_mb * 2**20) // row_bytes)
        self._resident: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._streams: dict[str, StreamedBatches] = {}
        self._blocks: SplitBlocks | None = None
        self._val_blocks: SplitBlocks | None = None
        self._position = (0, 0)  # the training stream's epoch and batches to skip, for a resumed fit

    def hold_whole(self) -> torch.Tensor:
        """A resident training split read whole onto the device (and, on a GPU, the validation split
        beside it) once, to be reused; returns the training activations."""
        if not (self.placement.full_batch and self.placement.train_resident):
            raise ValueError("hold_whole: the placement does not hold the training split on the device")
        if self.placement.val_beside_train:
            self._whole("val", self.val)
        return self._whole("train", self.train)[0]

    def blocks(self) -> SplitBlocks:
        """A full-batch training split that is not resident, as the blocks each evaluation reads (held
        in pinned host memory once, for the `host` home)."""
        if self._blocks is None:
            self._blocks = self._split_blocks(
                self.train,
                hold_on_host=self.placement.train_home is DataHome.host,
                device_bytes=self.placement.device_bytes,
            )
        return self._blocks

    def _split_blocks(
        self,
        dataset: ActivationDataset,
        *,
        hold_on_host: bool = False,
        device_bytes: int = 0,
        reuse_device_buffers: bool = True,
    ) -> SplitBlocks:
        # On a GPU a block's compute takes far less than its copy, and each block costs a few launches
        # and an autograd call: blocks of GPU_BLOCK_MB keep that overhead small against the copy.
        block_mb = max(self.streaming.read_mb, GPU_BLOCK_MB) if self.placement.device.type == "cuda" else None
        row_bytes = dataset.dim * dataset.storage_dtype.itemsize
        return SplitBlocks(
            dataset,
            self.placement.device,
            read_rows=self.read_rows if block_mb is None else max(1, int(block_mb * 2**20) // row_bytes),
            threads=max(1, self.streaming.reader_threads(full_batch=True)),
            prefetch=self.streaming.prefetch_batches + 1,
            hold_on_host=hold_on_host,
            device_bytes=device_bytes,
            reuse_device_buffers=reuse_device_buffers,
        )

    def train_dataloader(self) -> DataLoader:
        if self.placement.full_batch and self.placement.train_resident:
            return DataLoader(_OneItem(self._whole("train", self.train)), batch_size=None)
        if self.placement.full_batch:
            return DataLoader(_OneItem(self.blocks()), batch_size=None)  # the module reads its blocks
        return self._loader("train", self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self.placement.val_beside_train:
            return DataLoader(_OneItem(self._whole("val", self.val)), batch_size=None)
        if self.placement.full_batch:  # validated once, read as the training blocks are
            # Lightning's validation loop holds a batch while it fetches the next: no reused buffers.
            self._val_blocks = self._split_blocks(self.val, reuse_device_buffers=False)
            return DataLoader(_Blocks(self._val_blocks), batch_size=None)
        return self._loader("val", self.val, shuffle=False)

    def seek(self, epoch: int, batches: int) -> None:
        """The next training epoch is `epoch`, from its batch `batches` on (`probe_lab.fit.resume`)."""
        self._position = (epoch, batches)
        if "train" in self._streams:
            self._streams["train"].seek(epoch, batches)

    def epoch_read_through(self) -> bool:
        """Whether the training stream's last epoch begun has been read to its end."""
        return "train" in self._streams and self._streams["train"].read_through

    def val_order(self) -> np.ndarray:
        """The positions of the validation rows in the order validation batches bring them (a split read
        in blocks comes in storage order)."""
        if self._val_blocks is not None and not self.placement.val_beside_train:
            return np.concatenate(self._val_blocks.segments)
        return np.arange(len(self.val))

    def _whole(self, part: str, dataset: ActivationDataset) -> tuple[torch.Tensor, torch.Tensor]:
        if part not in self._resident:
            device = self.placement.device
            labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.float32))
            self._resident[part] = (dataset.to_device(device), labels.to(device))
        return self._resident[part]

    def _loader(self, part: str, dataset: ActivationDataset, *, shuffle: bool) -> DataLoader:
        # One stream per split for the whole fit: its epoch counter varies the shuffle. Training batches
        # come from reader threads in this process; validation batches are read straight from storage.
        # Rows already on a GPU come as they are read there, so there is nothing to pin.
        pin = torch.cuda.is_available() and dataset.device.type == "cpu"
        workers = self.streaming.reader_threads(full_batch=False)
        if part not in self._streams:
            self._streams[part] = StreamedBatches(
                dataset,
                self.batch_size,
                dtype=self.dtype,
                shuffle=shuffle,
                seed=self.seed,
                read_rows=self.read_rows,
                buffer_reads=self.streaming.shuffle_reads,
                threads=workers if shuffle else 0,
                prefetch=self.streaming.prefetch_batches,
                pin_memory=pin,
            )
            if shuffle:
                self._streams[part].seek(*self._position)
        threaded = shuffle and workers > 1
        return DataLoader(self._streams[part], batch_size=None, pin_memory=pin and not threaded)
