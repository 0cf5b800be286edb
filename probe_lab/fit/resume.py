"""Resume points of a minibatch (AdamW) fit, so that a stopped run goes on where it was.

A run folder's fits each keep their resume point in `<staging>/resume/fit-<n>/` (`n`: the fit's place
in the run: a run's fits come in the same order every time its command runs):
- `last.ckpt`, written by a `ModelCheckpoint` at the end of every epoch and when SIGTERM stops the fit
  after a batch was trained since (Lightning raises `SIGTERMException` at the end of the batch being
  trained; any other exception keeps the epoch's checkpoint). Lightning saves through
  an fsspec transaction: a file written to a temporary name and moved into place, so a checkpoint is
  whole or absent whenever the process is killed.
- `hpc_ckpt_<k>.ckpt`, written by Lightning's `SLURMEnvironment` if SLURM is told to send it SIGUSR1
  (the fit's `default_root_dir` is this folder). probe_lab's SLURM launcher requeues through
  submitit instead; the requeued job resumes from `last.ckpt` (`probe_lab.resuming.requeued`).

A fit that finds a checkpoint there continues from the newest one (Lightning's `ckpt_path`):
weights, AdamW's moments, the epoch and batch, EarlyStopping's patience and ModelCheckpoint's best
score, and — through `StreamPosition` — the position in the epoch's seeded shuffle. The batches of an
epoch already trained are read again and skipped, so the fit sees the same batches in the same order as
an uninterrupted one. A fit that finishes removes its folder. Full-batch L-BFGS fits have no resume
point: their state is scipy's, and a fit is one pass per evaluation; they are fitted again.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

LAST = "last"


class StreamPosition(Callback):
    """Where the training stream is, saved in every checkpoint: the epoch, the batches of it trained,
    and whether the epoch is over (its stream read to the end and validated after its last batch).

    Lightning creates a fit's first training iterator before any `on_train_*` hook, so a resumed fit's
    position is handed to the DataModule (`seek(epoch, batches)`) as soon as the checkpoint is loaded:
    the rest of the epoch it stopped in, or the next epoch from its first batch.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.batches = 0
        self.validated = False  # validation ran after the last batch trained
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer  # before a checkpoint is loaded

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch, self.batches, self.validated = trainer.current_epoch, 0, False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        self.batches += 1
        self.validated = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validated = not trainer.sanity_checking

    def state_dict(self) -> dict[str, Any]:
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        read_through = bool(getattr(datamodule, "epoch_read_through", lambda: False)())
        return {"epoch": self.epoch, "batches": self.batches, "epoch_over": self.validated and read_through}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch, self.batches = int(state_dict["epoch"]), int(state_dict["batches"])
        self.validated = False
        if state_dict.get("epoch_over"):
            self.epoch, self.batches = self.epoch + 1, 0
        seek = getattr(self._trainer.datamodule, "seek", None) if self._trainer is not None else None
        if seek is not None:
            seek(self.epoch, self.batches)


class NewestCheckpoint(ModelCheckpoint):
    """The newest checkpoint of a fit, `last.ckpt` in its folder: each epoch's replaces the one before
    (no monitor, save_top_k=1), and one saved on SIGTERM replaces it when a batch was trained since —
    except after an epoch's last batch and before its validation, a point Lightning cannot resume from
    (it would end the epoch without validating it): the epoch is then trained again."""

    def __init__(self, folder: Path) -> None:
        super().__init__(
            dirpath=folder,
            filename=LAST,
            monitor=None,
            save_top_k=1,
            save_on_exception=True,
            enable_version_counter=False,
        )

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Only SIGTERM's exception comes between batches; another (an error, or the SystemExit a signal
        # handler such as submitit's raises) may come mid-step, where weights and position disagree.
        if not isinstance(exception, SIGTERMException):
            return
        if not getattr(trainer.datamodule, "epoch_read_through", lambda: False)():
            super().on_exception(trainer, pl_module, exception)


def resume_callbacks(folder: Path) -> list[Callback]:
    """The callbacks that keep a minibatch fit's resume point in `folder`."""
    return [NewestCheckpoint(folder), StreamPosition()]


def resume_point(folder: Path) -> Path | None:
    """The newest checkpoint a stopped fit left in `folder`, if any."""
    checkpoints = sorted(folder.glob("*.ckpt"), key=lambda path: path.stat().st_mtime_ns) if folder.is_dir() else []
    return checkpoints[-1] if checkpoints else None


def finished(folder: Path) -> None:
    """A fit that finished needs no resume point."""
    shutil.rmtree(folder, ignore_errors=True)
