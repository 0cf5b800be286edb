"""The pytorch backend: `TorchProbeTrainer`, a Lightning fit of `ProbeModule` on the fit's `Placement`.

The objective, the coordinates it is optimized in and the L-BFGS driver live in `probe_lab.fit`; this
module only puts them together for one fit: the DataModule holds the splits where the placement says,
the statistics are taken where the training split lives, and a Lightning Trainer (`fit.trainer`) runs
the module. With `trainer.devices` / `trainer.num_nodes` asking for several processes, each process
fits its shard of the rows with the others (`probe_lab.fit.distributed`); only process 0 returns the
probes.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from probe_lab.artifacts import RESUME
from probe_lab.backends.base import FitResult, ProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.errors import ProbeLabError
from probe_lab.fit.datamodule import ProbeDataModule
from probe_lab.fit.distributed import is_collective_failure, lost_process
from probe_lab.fit.module import ProbeModule, prepared_module
from probe_lab.fit.resume import finished, resume_point
from probe_lab.fit.trainer import LightningParts, build_trainer, quiet_lightning
from probe_lab.probe import ProbeWeights
from probe_lab.settings import Penalty, ProbeTrainingConfig
from probe_lab.settings.parallel import Processes
from probe_lab.settings.placement import Placement

log = logging.getLogger(__name__)

COLUMN_BYTES_PER_ROW = 16  # a joint fold fit's float32 weight, logit, loss and gradient per row and column


class TorchProbeTrainer(ProbeTrainer):
    """Trains the probe with Lightning on the configured device (CUDA when asked for and present).

    run_dir: where Lightning's logs (logs/) and the best checkpoint (checkpoints/) go; without one
    they live in a temporary folder for the duration of `fit`. callbacks: Lightning callbacks added to
    the Trainer's own; the same objects serve every fit of this trainer, so stateful ones carry their
    state over (except ModelCheckpoint and EarlyStopping, copied for each fit: a fit's best checkpoint
    and patience are its own). lightning: the Trainer class, its flags, callbacks and loggers as
    composed by a user (see `probe_lab.fit.trainer.LightningParts`); by default probe_lab's own.
    keep_resume_points: a minibatch fit keeps its resume point in run_dir/resume/fit-<n>/ while it
    runs, and continues from one it finds there (`probe_lab.fit.resume`; a run of the command line asks
    for them, in a staging folder emptied unless it resumes).
    """

    backend = "pytorch"

    def __init__(
        self,
        input_dim: int,
        config: ProbeTrainingConfig | None = None,
        *,
        run_dir: str | Path | None = None,
        progress_bar: bool = False,
        callbacks: Sequence[pl.Callback] = (),
        lightning: LightningParts | None = None,
        keep_resume_points: bool = False,
    ) -> None:
        super().__init__(input_dim, config, run_dir=run_dir, progress_bar=progress_bar)
        self.keep_resume_points = keep_resume_points
        self.callbacks = list(callbacks)
        self.lightning = lightning or LightningParts()
        self._warned_joint_adamw = False
        self._fits = 0  # Lightning fits so far: a fit's place in the run names its resume point

    def _check_config(self) -> None:
        if self.config.penalty is not Penalty.l2:
            raise ProbeLabError("probe.penalty=l1 is supported by the sklearn backend only (use backend=sklearn)")

    @property
    def processes(self) -> Processes:
        return Processes.from_trainer_flags(self.lightning.trainer_options)

    def _fit(
        self,
        train: ActivationDataset,
        val: ActivationDataset,
        regularizations: list[float],
        placement: Placement,
        *,
        standardize: bool,
    ) -> list[FitResult]:
        return self._lightning_fit(train, val, regularizations, placement, standardize=standardize)

    def _fit_folds(
        self,
        pooled: ActivationDataset,
        val: ActivationDataset,
        folds: list[tuple[np.ndarray, np.ndarray]],
        regularizations: list[float],
        placement: Placement,
        *,
        standardize: bool,
    ) -> list[list[FitResult]]:
        """With the pooled rows held whole for full-batch L-BFGS (and they and the columns' working
        memory within the device's budget), every fold's path is a column block of one probe
        (`ProbeObjective`'s column_rows): one fit, one pass over the rows per evaluation for all folds.
        Otherwise fold by fold."""
        columns = len(folds) * len(regularizations)
        # The pooled rows held whole, and per row and column its weight, logit, loss and gradient (float32).
        needed = pooled.nbytes() + COLUMN_BYTES_PER_ROW * len(pooled) * columns
        together = placement.full_batch and placement.train_resident and not placement.processes.data_parallel
        if not together or needed > placement.budget_bytes:
            return super()._fit_folds(pooled, val, folds, regularizations, placement, standardize=standardize)
        fold_rows = np.zeros((len(pooled), len(folds)), dtype=bool)
        for number, (fit_rows, _) in enumerate(folds):
            fold_rows[fit_rows, number] = True
        column_rows = np.repeat(fold_rows, len(regularizations), axis=1)  # fold by fold, each fold's path
        results = self._lightning_fit(
            pooled, val, regularizations * len(folds), placement, standardize=standardize, column_rows=column_rows
        )
        if not results:
            return []
        width = len(regularizations)
        return [results[number * width : (number + 1) * width] for number in range(len(folds))]

    def _lightning_fit(
        self,
        train: ActivationDataset,
        val: ActivationDataset,
        regularizations: list[float],
        placement: Placement,
        *,
        standardize: bool,
        column_rows: np.ndarray | None = None,
    ) -> list[FitResult]:
        """One Lightning fit of a probe with a column per value of `regularizations` (fitted on the rows
        `column_rows` (N, K) names for each column, when given)."""
        if not placement.full_batch and len(regularizations) > 1 and not self._warned_joint_adamw:
            self._warned_joint_adamw = True  # once per trainer, however many fits a choice makes
            log.warning(
                "with AdamW the %d values of the regularization path train and stop together (EarlyStopping "
                "follows the best value); full-batch L-BFGS brings each value to its own optimum",
                len(regularizations),
            )
        self._fits += 1
        # A minibatch fit of one process in a run folder can be resumed (`probe_lab.fit.resume`).
        resumable = (
            self.keep_resume_points
            and self.run_dir is not None
            and not placement.full_batch
            and not placement.processes.data_parallel
        )
        resume_folder = self.run_dir / RESUME / f"fit-{self._fits}" if resumable else None
        with tempfile.TemporaryDirectory(prefix="probe_lab-") as scratch:
            out_dir = self.run_dir or Path(scratch)
            with quiet_lightning():
                trainer = build_trainer(
                    self.lightning,
                    placement,
                    self.config,
                    out_dir,
                    logs_dir=self.run_dir,
                    progress_bar=self.progress_bar,
                    extra_callbacks=self.callbacks,
                    resume_folder=resume_folder,
                )
            rank, processes = trainer.global_rank, trainer.world_size
            if processes != placement.processes.count:
                raise ProbeLabError(
                    f"the launcher started {processes} processes, but trainer.devices × trainer.num_nodes = "
                    f"{placement.processes.count}"
                )
            if placement.processes.data_parallel:  # the device Lightning gives this process
                placement = placement.for_process(trainer.strategy.root_device)
                self.placement = placement
            datamodule = ProbeDataModule(
                train,
                val,
                placement,
                batch_size=self.config.batch_size,
                seed=self.config.seed,
                streaming=self.config.streaming,
                rank=rank,
                processes=processes,
            )
            start = time.perf_counter()
            resident = datamodule.hold_whole() if placement.full_batch and placement.train_resident else None
            # A split read block by block is read now, into its homes, and the statistics take their
            # rows from there rather than reading them from storage once more.
            blocks = datamodule.blocks() if placement.full_batch and resident is None else None
            loaded = time.perf_counter()
            # The module and the data are on the device before the statistics are queued (a copy from
            # pageable host memory would wait for them); on a GPU nothing then waits for the statistics
            # until L-BFGS reads its first evaluation, so they run while the Trainer sets up.
            module = prepared_module(
                train,
                regularizations,
                dataclasses.replace(self.config, standardize=standardize),
                placement.optimizer,
                device=placement.device,
                resident=resident,
                shard=(datamodule.train, datamodule.train_shard) if processes > 1 else None,
                column_rows=column_rows,
                blocks=blocks,
            )
            stages = {"load_seconds": loaded - start, "statistics_seconds": time.perf_counter() - loaded}
            checkpoint = resume_point(resume_folder) if resume_folder is not None else None
            if checkpoint is not None:
                log.info("resuming fit %d from %s", self._fits, checkpoint)
            try:
                with quiet_lightning():
                    trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
            except RuntimeError as err:  # Lightning's and DDP's own collectives fail this way too
                if processes > 1 and is_collective_failure(err):
                    raise lost_process(rank, processes, err) from None
                raise
            if not placement.full_batch:  # a full-batch fit's one checkpoint holds the module's own state
                _load_best_checkpoint(trainer, module)
            if resume_folder is not None:
                finished(resume_folder)
            epochs, steps = trainer.current_epoch, trainer.global_step
        if not trainer.is_global_zero:
            return []  # process 0 holds the same probe, and reports it
        details = self._details(module, placement, epochs, steps, datamodule.dtype) | stages
        probe = module.probe
        weights, biases = probe.raw_weight().reshape(len(regularizations), -1), probe.raw_biases()
        # A data-parallel fit's processes each validate their own part of the split.
        val_logits = module.validated_logits(datamodule.val_order()) if processes == 1 else None
        return [
            FitResult(ProbeWeights(w.numpy(), float(b)), details, None if val_logits is None else val_logits[:, k])
            for k, (w, b) in enumerate(zip(weights, biases, strict=True))
        ]

    def _details(
        self, module: ProbeModule, placement: Placement, epochs: int, steps: int, dtype: torch.dtype
    ) -> dict[str, Any]:
        """What metrics.json's `fit` records of this fit."""
        details: dict[str, Any] = {
            "optimizer": placement.optimizer.value,
            "device": placement.accelerator,
            "precision": placement.precision,
            "trainer_precision": placement.trainer_precision,
            "activation_dtype": str(dtype).removeprefix("torch."),
            "epochs": epochs,
            "optimizer_steps": steps,
        }
        if placement.full_batch:
            details |= {
                "iterations": module.lbfgs_iterations,
                "evaluations": module.lbfgs_evaluations,
                "converged": module.lbfgs_converged,
                "optimize_seconds": module.lbfgs_seconds,
                "capture_seconds": module.capture_seconds,
            }
            if module.group is not None:
                details |= {"processes": module.group.size, "collective_seconds": module.group.seconds}
            if not module.lbfgs_converged:
                log.warning("L-BFGS did not converge in probe.max_iterations=%d iterations", self.config.max_iterations)
        return details


def _load_best_checkpoint(trainer: pl.Trainer, module: ProbeModule) -> None:
    """The weights of the best val_auroc checkpoint, when a ModelCheckpoint monitoring it kept one."""
    for checkpoint in trainer.checkpoint_callbacks:
        path = getattr(checkpoint, "best_model_path", "")
        if getattr(checkpoint, "monitor", None) == "val_auroc" and path:
            state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
            return
