"""`ProbeDataModule`: the Lightning view of train / validation splits.

Full-batch mode (L-BFGS) serves the whole training split as one batch, read once and kept resident
on the device in the storage dtype that the precision asks for (half precision halves the memory
and the bytes each pass reads; the probe accumulates in float32 either way). Minibatch mode (AdamW)
streams seeded, shuffled batches of `batch_size` rows, each read in one call.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from probe_lab.data.dataset import ActivationDataset

STORAGE_DTYPES = {"32": torch.float32, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


class _WholeSplit(Dataset):
    """One item: the whole split as (X, y) tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


class _StackAndCast:
    """Collate (x, y) samples into a batch, activations in the storage dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*samples, strict=True)
        return torch.stack(xs).to(self.dtype), torch.stack(ys)


class ProbeDataModule(pl.LightningDataModule):
    def __init__(
        self,
        train: ActivationDataset,
        val: ActivationDataset,
        *,
        batch_size: int,
        full_batch: bool,
        precision: str = "32",
        seed: int = 42,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.train, self.val = train, val
        self.batch_size = batch_size
        self.full_batch = full_batch
        self.storage_dtype = STORAGE_DTYPES[precision]
        self.seed = seed
        self.num_workers = num_workers
        self._resident: _WholeSplit | None = None

    def train_dataloader(self) -> DataLoader:
        if self.full_batch:
            if self._resident is None:
                x = torch.from_numpy(self.train.materialize()).to(self.storage_dtype)
                y = torch.from_numpy(np.asarray(self.train.labels, dtype=np.float32))
                self._resident = _WholeSplit(x, y)
            return DataLoader(self._resident, batch_size=None, pin_memory=torch.cuda.is_available())
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(self.train, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)

    def _loader(
        self, dataset: ActivationDataset, *, shuffle: bool, generator: torch.Generator | None = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=_StackAndCast(self.storage_dtype),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )
