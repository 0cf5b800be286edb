"""A Lightning callback the CLI tests add from the command line (`+callbacks.recorder._target_=...`):
it writes the hooks it saw and what it found on the Trainer into a JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Timer


class Recorder(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.record: dict = {"hooks": []}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["hooks"].append("fit_start")
        timers = [callback for callback in trainer.callbacks if isinstance(callback, Timer)]
        self.record["time_remaining"] = timers[0].time_remaining("train") if timers else None
        self.record["callbacks"] = sorted(type(callback).__name__ for callback in trainer.callbacks)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self.record["hooks"].append("train_batch_end")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["hooks"].append("fit_end")
        self.path.write_text(json.dumps(self.record))
