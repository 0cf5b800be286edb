"""The Lightning Trainer of one fit: the user's Trainer flags, callbacks and loggers (`LightningParts`),
with what probe_lab itself decides put on top.

probe_lab decides the accelerator, devices and precision (from the fit's `Placement`), and the
callbacks' and loggers' places in the run folder; it chooses defaults for the epochs (one full-batch
L-BFGS epoch, or `probe.max_iterations` AdamW epochs), gradient accumulation, the validation sanity
check and the model summary, which a user's Trainer flag overrides. Its own fixed pieces:
- a `ModelCheckpoint` without a `dirpath` saves into `checkpoints/` of the run folder;
- `ModelCheckpoint` and `EarlyStopping` callbacks are copied for each fit, so that a fit's best
  checkpoint and patience are its own (a run may fit several times);
- `EarlyStopping` callbacks are dropped with `early_stopping=False`, progress bars with
  `progress_bar=False` (and Lightning's own bar is then off too);
- its progress bar is `probe_lab.fit.progress_bar.lightning_progress_bar`'s (bars on a terminal only);
- without any logger given, a `CSVLogger` writes `logs/metrics.csv` into the run folder;
- checkpoints are written whole or not at all (`AtomicCheckpointIO`, unless `trainer.plugins` is set);
- a minibatch fit asked to keep resume points keeps one (`probe_lab.fit.resume`);
- a data-parallel fit (`trainer.devices` × `trainer.num_nodes` processes) runs on a `DDPStrategy` it
  builds, with collectives that time out after `collective_timeout_s` and without Lightning's
  DistributedSampler (each process holds its own shard).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.strategies import DDPStrategy

from probe_lab.errors import ProbeLabError
from probe_lab.fit.progress_bar import lightning_progress_bar
from probe_lab.fit.resume import AtomicCheckpointIO, resume_callbacks
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.settings.placement import Placement

# Trainer arguments the placement and probe_lab's own pieces set; a Trainer flag cannot override them.
DECIDED_ELSEWHERE = {
    "accelerator": "device=",
    "precision": "precision=",
    "callbacks": "the callbacks group",
    "logger": "the logger group",
    "enable_progress_bar": "progress_bar=",
}


@dataclass
class LightningParts:
    """Lightning's pieces of a fit as a user composes them: Hydra's trainer / callbacks / logger
    groups (`probe_lab.lightning_config`), or the Python API.

    trainer_class: the Trainer to build (`trainer._target_`).
    trainer_options: Trainer flags the user set; they win over probe_lab's defaults.
    callbacks: the callbacks; None for probe_lab's defaults (`default_callbacks`).
    loggers: the loggers; None for a CSVLogger into the run folder (none without a run folder).
    """

    trainer_class: type[pl.Trainer] = pl.Trainer
    trainer_options: dict[str, Any] = field(default_factory=dict)
    callbacks: list[pl.Callback] | None = None
    loggers: list[Logger] | None = None

    def __post_init__(self) -> None:
        for name in self.trainer_options:
            if name in DECIDED_ELSEWHERE:
                raise ProbeLabError(f"trainer.{name} is decided by {DECIDED_ELSEWHERE[name]}, not a Trainer flag")


def default_callbacks(config: ProbeTrainingConfig) -> list[pl.Callback]:
    """ModelCheckpoint of the best val_auroc, EarlyStopping on it and the progress bar (what
    `callbacks=default` composes)."""
    return [
        ModelCheckpoint(
            monitor="val_auroc",
            mode="max",
            save_top_k=1,
            save_weights_only=True,
            filename="best-{epoch}-{val_auroc:.4f}",
        ),
        EarlyStopping(monitor="val_auroc", mode="max", patience=config.early_stopping_patience),
        lightning_progress_bar(),
    ]


def build_trainer(
    parts: LightningParts,
    placement: Placement,
    config: ProbeTrainingConfig,
    out_dir: Path,
    *,
    logs_dir: Path | None,
    progress_bar: bool,
    extra_callbacks: Sequence[pl.Callback] = (),
    resume_folder: Path | None = None,
) -> pl.Trainer:
    """The Trainer of one fit. out_dir: its root and checkpoints' folder; logs_dir: where the default
    CSV logs go (None: no default logger); resume_folder: where a minibatch fit keeps its resume point
    (`probe_lab.fit.resume`; also the Trainer's root, where SLURM's requeue checkpoints go)."""
    callbacks = [*(parts.callbacks if parts.callbacks is not None else default_callbacks(config)), *extra_callbacks]
    # A run fits several times (a path's scalings, cross-validation's folds, the controls): each fit
    # keeps its own best checkpoint and patience, never an earlier fit's.
    callbacks = [
        copy.deepcopy(callback) if isinstance(callback, (ModelCheckpoint, EarlyStopping)) else callback
        for callback in callbacks
        if not (isinstance(callback, EarlyStopping) and not config.early_stopping)
        and not (isinstance(callback, ProgressBar) and not progress_bar)
    ]
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = str(out_dir / "checkpoints")
    if resume_folder is not None:
        callbacks += resume_callbacks(resume_folder)
    if parts.loggers is not None:
        loggers: list[Logger] | bool = parts.loggers or False
    else:
        loggers = [CSVLogger(logs_dir, name="logs", version="")] if logs_dir is not None else False
    full_batch = placement.full_batch
    options = dict(parts.trainer_options)
    options.pop("devices", None)  # the placement's: one device, or the data-parallel processes per node
    options.pop("strategy", None)
    strategy: str | DDPStrategy = "auto"
    if placement.processes.data_parallel:
        strategy = DDPStrategy(timeout=timedelta(seconds=config.collective_timeout_s))
        options.setdefault("use_distributed_sampler", False)
    chosen: dict[str, Any] = {
        "max_epochs": 1 if full_batch else config.max_iterations,
        "accumulate_grad_batches": 1 if full_batch else config.gradient_accumulation_steps,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "default_root_dir": str(resume_folder or out_dir),
    }
    if "plugins" not in options:
        chosen["plugins"] = [AtomicCheckpointIO()]
    return parts.trainer_class(
        **(chosen | options),
        accelerator=placement.accelerator,
        devices=placement.lightning_devices,
        strategy=strategy,
        precision=placement.trainer_precision,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=progress_bar,
    )


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Keep Lightning's start-up banner (accelerator lines, tips) and warnings that do not apply to a
    probe's fit out of the run's output."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
            # Full-batch training reads one resident batch, so worker processes would have nothing to do.
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            # device=cpu on a GPU machine is a choice, not an oversight.
            warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
            # A resumed fit's checkpoint folders hold its earlier checkpoints, as they should.
            warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
            # A fit with a resume point and nothing to resume from starts afresh, as it should.
            warnings.filterwarnings("ignore", message=r".*ckpt_path=None\)` was called without a model.*")
            warnings.filterwarnings("ignore", message=r".*there is no last checkpoint available.*")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
