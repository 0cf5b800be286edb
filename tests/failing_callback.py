"""A Lightning callback the data-parallel tests add from the command line: it raises on one process
of the fit when training starts, as a process that loses its data or its device would."""

from __future__ import annotations

import lightning.pytorch as pl

from probe_lab.errors import ProbeLabError


class FailOnProcess(pl.Callback):
    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == self.rank:
            raise ProbeLabError(f"injected failure on process {self.rank}")
