"""A fit's progress bar: Lightning's TQDM bar on a terminal and, anywhere else (a log file, a pipe, a
sweep's job), `PlainProgressBar`'s plain lines, so that logs hold a few readable lines instead of
carriage-return redraws (`probe_lab.report.progress.on_terminal` decides which).
"""

from __future__ import annotations

import time
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from probe_lab.report.progress import INTERVAL_S, Clock, PeriodicLines, on_terminal


def lightning_progress_bar(refresh_rate: int = 1, interval_s: float = INTERVAL_S) -> ProgressBar:
    """The progress bar of a fit (what `callbacks.progress_bar` builds): Lightning's TQDM bar redrawn
    every `refresh_rate` batches on a terminal, otherwise a line every `interval_s` seconds."""
    if on_terminal():
        return TQDMProgressBar(refresh_rate=refresh_rate)
    return PlainProgressBar(interval_s)


class PlainProgressBar(ProgressBar):
    """A fit's progress as lines `epoch E/MAX  step S  <the progress bar's metrics>  (elapsed)`: at most one
    every `interval_s` seconds while training, checked after each training batch and epoch, and one when
    training ends. `clock` and `stream` are for tests."""

    interval_s: float = INTERVAL_S

    def __init__(
        self, interval_s: float | None = None, *, clock: Clock = time.monotonic, stream: TextIO | None = None
    ) -> None:
        super().__init__()
        self.lines = PeriodicLines(self.interval_s if interval_s is None else interval_s, clock, stream)
        self.enabled = True
        self.last_status: str | None = None

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lines.start()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._write_if_due(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_if_due(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        status = self._status(trainer, pl_module, trainer.current_epoch)  # current_epoch: the finished epochs
        if self.enabled and status != self.last_status:  # not the line the last periodic one already said
            self._write(status)

    def _write_if_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and self.lines.due():
            self._write(self._status(trainer, pl_module, trainer.current_epoch + 1))

    def _write(self, status: str) -> None:
        self.lines.write(status)
        self.last_status = status

    def _status(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> str:
        max_epochs = trainer.max_epochs
        parts = [f"epoch {epoch}/{max_epochs}" if max_epochs and max_epochs > 0 else f"epoch {epoch}"]
        parts.append(f"step {trainer.global_step}")
        for name, value in sorted(self.get_metrics(trainer, pl_module).items()):
            if name != "v_num":  # the logger's version: noise in a log
                parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
        return "  ".join(parts)
