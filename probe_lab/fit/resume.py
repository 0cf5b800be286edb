"""Resume points of a minibatch (AdamW) fit, so that a stopped run goes on where it was.

A run folder's fits each keep their resume point in `<staging>/resume/fit-<n>/` (`n`: the fit's place
in the run: a run's fits come in the same order every time its command runs):
- `last.ckpt`, written by a `ModelCheckpoint` at the end of every epoch and when SIGTERM stops the fit
  after a batch was trained since (Lightning raises `SIGTERMException` at the end of the batch being
  trained; any other exception keeps the epoch's checkpoint). Checkpoints are written whole or not at
  all (`AtomicCheckpointIO`), so a kill or a full disk never takes the last resume point with it.
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

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from probe_lab.artifacts import atomic_write_bytes

LAST = "last"


class StreamPosition(Callback):
    """Where the training stream is, saved in every checkpoint: the epoch, the batches of it trained,
    and whether the epoch is over (Lightning's `on_train_epoch_end` has run).

    Lightning creates a fit's first training iterator before any `on_train_*` hook, so a resumed fit's
    position is handed to the DataModule (`seek(epoch, batches)`) as soon as the checkpoint is loaded:
    the rest of the epoch it stopped in, or the next epoch from its first batch.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.batches = 0
        self.epoch_over = False
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer  # before a checkpoint is loaded

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch, self.batches, self.epoch_over = trainer.current_epoch, 0, False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        self.batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_over = True

    def resumable_mid_epoch(self, trainer: pl.Trainer) -> bool:
        """Whether a checkpoint taken now, between two batches, resumes exactly: right after an optimizer
        step (a checkpoint holds no accumulated gradients), and not after the epoch's last batch, before
        its end (Lightning would end the epoch without validating it)."""
        if self.epoch_over or self.batches % max(1, trainer.accumulate_grad_batches):
            return False
        read_through = bool(getattr(trainer.datamodule, "epoch_read_through", lambda: False)())
        return not read_through and self.batches < trainer.num_training_batches

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.batches, "epoch_over": self.epoch_over}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch, self.batches = int(state_dict["epoch"]), int(state_dict["batches"])
        self.epoch_over = False
        if state_dict.get("epoch_over"):
            self.epoch, self.batches = self.epoch + 1, 0
        seek = getattr(self._trainer.datamodule, "seek", None) if self._trainer is not None else None
        if seek is not None:
            seek(self.epoch, self.batches)


class NewestCheckpoint(ModelCheckpoint):
    """The newest checkpoint of a fit, `last.ckpt` in its folder: each epoch's, saved when the epoch
    ends (validated or not), replaces the one before (no monitor, save_top_k=1); one saved on SIGTERM
    replaces it where the fit can resume exactly from there (`StreamPosition.resumable_mid_epoch`),
    else the epoch's is kept and the epoch is trained again."""

    def __init__(self, folder: Path, position: StreamPosition) -> None:
        super().__init__(
            dirpath=folder,
            filename=LAST,
            monitor=None,
            save_top_k=1,
            save_on_exception=True,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.position = position

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Only SIGTERM's exception comes between batches; another (an error, or the SystemExit a signal
        # handler such as submitit's raises) may come mid-step, where weights and position disagree.
        if isinstance(exception, SIGTERMException) and self.position.resumable_mid_epoch(trainer):
            super().on_exception(trainer, pl_module, exception)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all: into a hidden file beside the target, renamed over it.

    Lightning's own save goes through a temporary file of the system's temporary folder, moved into
    place: where that folder is on another file system (usual on clusters) the move is a copy over the
    old checkpoint, which a kill or a full disk would leave truncated — and a fit's resume point lost.
    Paths of other file systems (s3://, ...) are left to Lightning's save.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(path), buffer.getvalue())


def resume_callbacks(folder: Path) -> list[Callback]:
    """The callbacks that keep a minibatch fit's resume point in `folder`."""
    position = StreamPosition()
    return [NewestCheckpoint(folder, position), position]


def resume_point(folder: Path) -> Path | None:
    """The newest checkpoint a stopped fit left in `folder`, if any."""
    checkpoints = sorted(folder.glob("*.ckpt"), key=lambda path: path.stat().st_mtime_ns) if folder.is_dir() else []
    return checkpoints[-1] if checkpoints else None


def finished(folder: Path) -> None:
    """A fit that finished needs no resume point (nor an empty folder of them)."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # only when no other fit's is left
