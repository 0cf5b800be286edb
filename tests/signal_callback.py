"""A Lightning callback the resume tests add from the command line: it sends this process a signal once
a given batch of a given epoch has been trained, as a scheduler or an operator would. With `once`, a
file it creates first, it signals only the first time: the same command run again (resumed) goes on."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl


class SignalAt(pl.Callback):
    def __init__(self, epoch: int, batch: int, signal: int, once: str, only_seed: int | None = None, seed: int = 0):
        self.epoch, self.batch, self.signal = epoch, batch, signal
        self.once = Path(once)
        self.armed = only_seed is None or only_seed == seed

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        batch = args[-1]
        if not self.armed or (trainer.current_epoch, batch) != (self.epoch, self.batch):
            return
        try:
            self.once.touch(exist_ok=False)
        except FileExistsError:
            return
        os.kill(os.getpid(), self.signal)
