"""The PyTorch Lightning backend: a LightningModule around `LinearProbe`, run by a Lightning Trainer.

The objective is sklearn's, divided by C·N:

    mean BCE-with-logits + (regularization / 2N) · ‖w‖²      (bias not penalized)

written in the probe's conditioned coordinates u = w ⊙ s, where it reads Σ q_j u_j² with
q = 1/s² (raw penalty) or q = σ²/s² (standardize=true, the penalty of standardized features).
The scale s_j² = σ_j² + 4·regularization/N makes the Hessian's diagonal ≈ ¼ at the start for every
coordinate — a Jacobi preconditioner that leaves the minimizer unchanged — so L-BFGS converges in
tens of steps on activations with outlier dimensions. With standardize=true, s = σ.

optimizer=lbfgs runs full-batch L-BFGS (scipy's L-BFGS-B, sklearn's optimizer) to convergence in one
optimizer step (its line search needs the exact objective and gradient, so there are no minibatches);
optimizer=adamw streams minibatches with gradient accumulation, and EarlyStopping on validation AUROC
decides when to stop.

Lightning's float16 AMP cannot serve a full-batch optimizer that calls its own closure: the gradient
scaler would step the optimizer without the closure and scale the loss the line search reads. The
probe accumulates in float32 whatever the storage dtype (`LinearProbe`), so with L-BFGS and 16-mixed
the activations are still held in float16 while the Trainer itself runs in 32-bit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torchmetrics.classification import BinaryAUROC, MultilabelAUROC

from probe_lab.backends.base import FitResult, ProbeTrainer
from probe_lab.backends.lbfgsb import ScipyLBFGSB
from probe_lab.data.datamodule import ProbeDataModule
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import Splits
from probe_lab.data.stats import device_moments, feature_moments
from probe_lab.errors import ProbeLabError
from probe_lab.linear_probe import LinearProbe
from probe_lab.probe import ProbeWeights
from probe_lab.resolver import resolve_device, resolve_memory_budget, resolve_precision
from probe_lab.settings import OptimizerName, Penalty, ProbeTrainingConfig

log = logging.getLogger(__name__)

# L-BFGS stops when the largest gradient entry or the change in the objective falls below these.
LBFGS_TOLERANCE_GRAD = 1e-5
LBFGS_TOLERANCE_CHANGE = 1e-10
LBFGS_HISTORY = 20
# Rows sampled for the per-feature statistics of raw (unstandardized) features. There they only set
# the preconditioner and the centering, which leave the optimum unchanged, so a few percent of error
# costs nothing; standardize=true uses every row, as its statistics define the objective.
PRECONDITIONER_ROWS = 16384


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Keep Lightning's start-up banner (accelerator lines, tips) out of the run's output."""
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
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def placement(config: ProbeTrainingConfig) -> tuple[str, str, list[int] | int]:
    """(device, Lightning precision, Lightning `devices`) for `config`, falling back to the CPU
    without CUDA. `device="cuda:K"` trains on GPU K; "cuda" on the first one."""
    kind, _, index = config.device.partition(":")
    device = resolve_device("cuda" if kind == "cuda" else kind)
    precision = resolve_precision(config.resolved_precision(device), device)
    if device == "cuda" and index:
        if not index.isdigit():
            raise ProbeLabError(f"device must be cpu, cuda or cuda:<index>, got {config.device!r}")
        return device, precision, [int(index)]
    return device, precision, 1


def training_device(config: ProbeTrainingConfig) -> torch.device:
    """The device `config` trains on: the CPU, or the GPU Lightning is given (`devices=1` is the first)."""
    device, _, devices = placement(config)
    if device != "cuda":
        return torch.device("cpu")
    return torch.device("cuda", devices[0] if isinstance(devices, list) else 0)


def memory_budget(config: ProbeTrainingConfig) -> tuple[torch.device, int]:
    """(the training device, the bytes of activations it may hold: `device.memory_budget_gb`, or
    half the GPU's memory / half of MemAvailable on the CPU)."""
    device = training_device(config)
    return device, resolve_memory_budget(config.memory_budget_gb, device.type, device.index or 0)


def resident_device(config: ProbeTrainingConfig, nbytes: int) -> torch.device | None:
    """The GPU on which full-batch training with `config` holds `nbytes` of activations, or None:
    training on the CPU, with AdamW, or beyond the device's memory budget."""
    device, budget = memory_budget(config)
    if device.type != "cuda" or config.optimizer is OptimizerName.adamw or nbytes > budget:
        return None
    return device


@functools.cache
def _has_entry_points(group: str) -> bool:
    return bool(list(entry_points(group=group)))


@contextmanager
def callback_entry_points_scanned_once() -> Iterator[None]:
    """Inside this block (where probe_lab builds and runs its Trainer), Lightning looks for external
    callback factories only in entry point groups known to have any; which groups do is remembered
    for the rest of the process.

    Every `Trainer()` scans the entry points of all installed distributions for callback factories
    (`_load_external_callbacks`): 25-50 ms in an environment of a few hundred packages, more than
    the rest of the Trainer's set-up around a full-batch fit on a GPU (benchmarks/trainer_overhead.py).
    Installed packages do not change while a process runs. Lightning's own loader still runs, and
    calls the factories afresh, for a group that has entry points; nothing is changed outside this
    block, and nothing at all if Lightning no longer has that loader.
    """
    from lightning.pytorch.trainer.connectors import callback_connector

    load = getattr(callback_connector, "_load_external_callbacks", None)
    if load is None:
        yield
        return

    def load_if_any(group: str) -> list[Any]:
        return load(group) if _has_entry_points(group) else []

    callback_connector._load_external_callbacks = load_if_any
    try:
        yield
    finally:
        callback_connector._load_external_callbacks = load


class CachingCUDAAccelerator(CUDAAccelerator):
    """Lightning's CUDA accelerator without its cache clearing around every fit.

    `CUDAAccelerator.setup` and `teardown` empty PyTorch's CUDA caching allocator and cuBLAS's
    workspaces. probe_lab runs many fits in one process (repeats, sweeps, paths) on data it keeps on
    the GPU, and after each clearing the next fit paid for its memory again and synchronized the
    device twice: in a profiled fit at 70B width (2.6 GB of activations, H200), cudaMalloc and
    cudaFree took 5.3 ms of host time. Memory a fit frees stays in PyTorch's cache for the next one,
    as it does in any PyTorch program, and cuBLAS keeps its workspaces: `torch.cuda.empty_cache()`
    returns the cache, `torch._C._cuda_clearCublasWorkspaces()` the workspaces (what Lightning did).
    Overrides the parent's `setup` and `teardown` whole: `setup` keeps the rest of what it does.
    """

    def setup(self, trainer: pl.Trainer) -> None:
        self.set_nvidia_flags(trainer.local_rank)

    def teardown(self) -> None:
        pass


class ProbeModule(pl.LightningModule):
    """Minimizes the L2-penalized logistic loss of a `LinearProbe`; logs train_loss and val_auroc.

    With K regularization values the probe has K columns and the objective is the sum of the K
    independent objectives, so one pass over the data serves the whole path; val_auroc is then the
    best column's (what EarlyStopping and ModelCheckpoint follow).
    """

    def __init__(
        self,
        probe: LinearProbe,
        *,
        regularization: list[float],
        n_train: int,
        optimizer: OptimizerName,
        learning_rate: float,
        max_iterations: int,
    ) -> None:
        """The probe's coordinates start as they are (penalty weights 1) until `precondition`."""
        super().__init__()
        self.probe = probe
        self.register_buffer("penalty_weights", torch.ones(len(regularization), probe.input_dim))
        # reg / N per column in float64, for the preconditioner; derived, so not in checkpoints.
        reg_over_n = torch.tensor(regularization, dtype=torch.float64).reshape(-1, 1) / n_train
        self.register_buffer("reg_over_n", reg_over_n, persistent=False)
        self.register_buffer("penalty_coef", (reg_over_n / 2.0).float())  # of the objective
        self.optimizer_name = optimizer
        self.learning_rate = learning_rate
        self.max_iterations = max_iterations
        self.automatic_optimization = optimizer is not OptimizerName.lbfgs
        paths = len(regularization)
        self.val_auroc = BinaryAUROC() if paths == 1 else MultilabelAUROC(num_labels=paths, average="none")
        self.lbfgs_iterations = 0
        self.lbfgs_evaluations = 0
        self.lbfgs_converged = False
        self.lbfgs_seconds = 0.0
        self.capture_seconds = 0.0  # capturing the CUDA graph of an evaluation

    @torch.no_grad()
    def precondition(self, mean: torch.Tensor, std: torch.Tensor, *, standardize: bool) -> None:
        """Express each column of the probe in coordinates centered on the features' `mean` and
        scaled by s, with s² = std² + 4·reg/N and penalty weights 1/s² on raw features, or s = std
        and penalty weights 1 with standardize=true (the penalty of standardized features).

        Computed where the module lives, in float64, without reading anything back to the host: on
        a GPU the statistics' kernels may still be running, and nothing here waits for them.
        """
        device = self.penalty_weights.device
        mean, std = mean.to(device, torch.float64), std.to(device, torch.float64)
        if standardize:
            scale = torch.where(std > 0, std, 1.0).expand_as(self.penalty_weights)
            penalty_weights = torch.ones_like(scale)
        else:
            scale = (std**2 + 4.0 * self.reg_over_n).sqrt()
            penalty_weights = scale**-2
        self.probe.set_coordinates(mean, scale)
        self.penalty_weights.copy_(penalty_weights)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The penalized loss of the whole batch (a sum over the path's columns), as a float64 scalar.

        Each row's loss is float32; their sum is float64. A float32 sum rounds the objective to
        about 3e-8, which is the size of the last decreases L-BFGS has to see near the optimum: its
        line search would take them for no decrease and spend evaluations until it gave up.
        """
        logits = self.probe(x)
        targets = y.float()[:, None].expand_as(logits) if logits.ndim == 2 else y.float()
        row_losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        data_loss = row_losses.sum(0, dtype=torch.float64) / len(row_losses)  # per column on a path
        u = self.probe.linear.weight
        return data_loss.sum() + (self.penalty_coef * self.penalty_weights * u * u).sum(dtype=torch.float64)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.automatic_optimization:  # AdamW: one minibatch
            loss = self.objective(x, y)
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
            return loss
        return self._lbfgs_step(x, y)

    def _lbfgs_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Full-batch L-BFGS to convergence in one optimizer step, optimized manually.

        scipy's L-BFGS-B (`ScipyLBFGSB`) calls the closure once per objective evaluation, and each
        evaluation ends in a host sync (the optimizer reads the loss and gradient), so per-call
        overhead adds up directly: Lightning's automatic loop would run its step hooks and logging at
        every evaluation. Here the closure computes the loss and gradient itself (on a GPU by
        replaying one CUDA graph), and Lightning counts the one optimizer step (checkpointing follows
        it); benchmarks/gpu_scale.py compares this loop with a plain one."""
        optimizer = self.optimizers()
        lbfgs = optimizer.optimizer
        start = time.perf_counter()
        evaluate = _Evaluation(self, x, y)
        loss = optimizer.step(closure=evaluate)  # the objective where L-BFGS stopped
        self.lbfgs_seconds = time.perf_counter() - start
        self.capture_seconds = evaluate.capture_seconds
        result = lbfgs.result
        self.lbfgs_iterations, self.lbfgs_evaluations = int(result.nit), int(result.nfev)
        self.lbfgs_converged = lbfgs.converged
        if result.status != 0:
            (log.info if self.lbfgs_converged else log.warning)("L-BFGS-B stopped: %s", result.message)
        self.log("train_loss", float(loss), on_step=True, on_epoch=False, prog_bar=True, batch_size=len(y))
        self.log("lbfgs_iterations", float(self.lbfgs_iterations), on_step=True, on_epoch=False)
        if self.lbfgs_converged:
            self.trainer.should_stop = True
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.probe(x)
        if logits.ndim == 2:
            self.val_auroc.update(logits, y.long()[:, None].expand_as(logits))
            return
        self.val_auroc.update(logits, y.long())
        self.log("val_auroc", self.val_auroc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        if isinstance(self.val_auroc, MultilabelAUROC):
            self.log("val_auroc", self.val_auroc.compute().max(), prog_bar=True)
            self.val_auroc.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name is OptimizerName.lbfgs:
            return ScipyLBFGSB(
                self.parameters(),
                max_iter=self.max_iterations,
                history_size=LBFGS_HISTORY,
                tolerance_grad=LBFGS_TOLERANCE_GRAD,
                tolerance_change=LBFGS_TOLERANCE_CHANGE,
            )
        # weight_decay=0: the penalty is in the objective; AdamW's decay would be another objective.
        return torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=0.0)


class _Evaluation:
    """The module's objective and gradient on resident (x, y), called once per L-BFGS evaluation:
    returns the loss and leaves the gradient in the parameters' `.grad`.

    On a GPU it runs as one CUDA graph. An evaluation is two reads of the resident data plus dozens
    of small kernels; launched one by one from Python they took longer than the reads
    (benchmarks/gpu_scale.py). The first call runs eagerly on a side stream, which serves as the
    warm-up that capture needs (lazy cuBLAS and autograd set-up happen outside the graph), then
    captures the graph there; later calls replay it. The parameters keep their storage (the
    optimizer writes them in place), so the graph stays valid. On the CPU, or if this build cannot
    capture, evaluations run eagerly.
    """

    def __init__(self, module: ProbeModule, x: torch.Tensor, y: torch.Tensor) -> None:
        self.module, self.x, self.y = module, x, y
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager = not x.is_cuda
        self.capture_seconds = 0.0

    def loss_and_grads(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        with torch.enable_grad():
            loss = self.module.objective(self.x, self.y)
            return loss.detach(), torch.autograd.grad(loss, self.params)

    def __call__(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            loss, grads = self.loss, self.grads
        elif self.eager:
            loss, grads = self.loss_and_grads()
        else:
            loss, grads = self._first_evaluation()
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = grad  # the optimizer copies gradients out before the next replay
        return loss

    def _first_evaluation(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        device = self.x.device
        side = _capture_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            result = self.loss_and_grads()
            start = time.perf_counter()
            graph = torch.cuda.CUDAGraph()
            try:
                # capture_begin/end rather than the torch.cuda.graph context, which collects garbage
                # and empties the allocator's cache before every capture.
                graph.capture_begin()
                try:
                    loss, grads = self.loss_and_grads()
                except BaseException:
                    with contextlib.suppress(RuntimeError):  # keep the capture's own error
                        graph.capture_end()
                    raise
                graph.capture_end()
                self.loss, self.grads, self.graph = loss, grads, graph
            except RuntimeError as err:
                reason = (str(err).splitlines() or [type(err).__name__])[0]
                log.warning("evaluating without a CUDA graph, which is slower (%s)", reason)
                self.eager = True
            self.capture_seconds = time.perf_counter() - start
        torch.cuda.current_stream(device).wait_stream(side)
        return result


@functools.cache
def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for capturing evaluations, kept for the process: cuBLAS sets up a
    workspace per stream, which a fresh stream would pay for at every fit."""
    return torch.cuda.Stream(device)


class TorchProbeTrainer(ProbeTrainer):
    """Trains the probe with Lightning on the configured device (CUDA when asked for and present).

    run_dir: where Lightning's CSV logs (logs/) and the best checkpoint (checkpoints/) go; without
    one they live in a temporary folder for the duration of `fit`.
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
    ) -> None:
        """callbacks: Lightning callbacks added to the Trainer's own (checkpointing, early stopping);
        the same objects serve every fit of this trainer, so stateful ones carry their state over."""
        super().__init__(input_dim, config, run_dir=run_dir, progress_bar=progress_bar)
        self.callbacks = list(callbacks)

    def _check_config(self) -> None:
        if self.config.penalty is not Penalty.l2:
            raise ProbeLabError("probe.penalty=l1 is supported by the sklearn backend only (use backend=sklearn)")

    def placement(self) -> tuple[str, str, list[int] | int]:
        """(device, Lightning precision, Lightning `devices`) for this trainer's config (`placement`)."""
        return placement(self.config)

    def optimizer_for(self, train: ActivationDataset, val: ActivationDataset | None = None) -> OptimizerName:
        """`auto`: full-batch L-BFGS when the training split (on a GPU with the validation split, held
        beside it), in its stored dtype, fits the device's memory budget; minibatch AdamW streaming
        from disk otherwise."""
        if self.config.optimizer is not OptimizerName.auto:
            return self.config.optimizer
        device, budget = memory_budget(self.config)
        held = train.nbytes() + (val.nbytes() if val is not None and device.type == "cuda" else 0)
        fits = held <= budget  # held in the stored dtype
        return OptimizerName.lbfgs if fits else OptimizerName.adamw

    def hold(self, splits: Splits) -> Splits:
        """On a GPU, with full-batch training and every split within the memory budget together, each
        split is read once onto the GPU: training, validation and scoring then never touch the host."""
        parts = [splits.train, splits.val] + ([splits.test] if splits.test is not None else [])
        target = resident_device(self.config, sum(part.nbytes() for part in parts))
        if target is None:
            return splits
        test = splits.test.on_device(target) if splits.test is not None else None
        return Splits(splits.train.on_device(target), splits.val.on_device(target), test)

    def _fit(self, train: ActivationDataset, val: ActivationDataset, regularizations: list[float]) -> list[FitResult]:
        optimizer = self.optimizer_for(train, val)
        device, precision, devices = self.placement()
        target = training_device(self.config)
        lbfgs = optimizer is OptimizerName.lbfgs
        if optimizer is OptimizerName.adamw and len(regularizations) > 1:
            log.warning(
                "with AdamW the %d values of the regularization path train and stop together (EarlyStopping "
                "follows the best value); full-batch L-BFGS brings each value to its own optimum",
                len(regularizations),
            )
        datamodule = ProbeDataModule(
            train,
            val,
            device=target,
            batch_size=self.config.batch_size,
            full_batch=lbfgs,
            seed=self.config.seed,
            num_workers=self.config.num_workers,
            read_mb=self.config.read_mb,
            shuffle_reads=self.config.shuffle_reads,
            prefetch_batches=self.config.prefetch_batches,
        )
        start = time.perf_counter()
        resident = datamodule.hold_whole() if lbfgs else None
        loaded = time.perf_counter()
        # The module and the data are on the device before the statistics are queued: a copy from
        # pageable host memory would wait for them. On a GPU nothing then waits for the statistics
        # until L-BFGS reads its first evaluation, so they run while the Trainer sets up.
        module = self._initial_module(train, optimizer, regularizations).to(target)
        if resident is None:
            mean, std = (torch.from_numpy(m) for m in feature_moments(train))
        else:  # full batch: from the resident copy, where it lives (one read of the data)
            # Raw features only need each feature's scale, for the preconditioner: a sample gives it.
            mean, std = device_moments(resident, sample_rows=None if self.config.standardize else PRECONDITIONER_ROWS)
        module.precondition(mean, std, standardize=self.config.standardize)
        # Host time of the module, the statistics and the preconditioner: on a GPU the statistics
        # themselves finish during the Trainer's set-up.
        stages = {"load_seconds": loaded - start, "statistics_seconds": time.perf_counter() - loaded}
        with tempfile.TemporaryDirectory(prefix="probe_lab-") as scratch:
            out_dir = self.run_dir or Path(scratch)
            checkpoint = ModelCheckpoint(
                dirpath=out_dir / "checkpoints",
                monitor="val_auroc",
                mode="max",
                save_top_k=1,
                save_weights_only=True,
                filename="best-{epoch}-{val_auroc:.4f}",
            )
            callbacks: list[pl.Callback] = [checkpoint, *self.callbacks]
            if self.config.early_stopping:
                callbacks.append(
                    EarlyStopping(monitor="val_auroc", mode="max", patience=self.config.early_stopping_patience)
                )
            trainer_precision = "32" if lbfgs and precision == "16-mixed" else precision
            with quiet_lightning(), callback_entry_points_scanned_once():
                trainer = pl.Trainer(
                    accelerator=CachingCUDAAccelerator() if device == "cuda" else "cpu",
                    devices=devices,
                    precision=trainer_precision,  # type: ignore[arg-type]
                    max_epochs=1 if lbfgs else self.config.max_iterations,
                    accumulate_grad_batches=1 if lbfgs else self.config.gradient_accumulation_steps,
                    callbacks=callbacks,
                    logger=CSVLogger(out_dir, name="logs", version="") if self.run_dir else False,
                    enable_progress_bar=self.progress_bar,
                    enable_model_summary=False,
                    num_sanity_val_steps=0,
                    log_every_n_steps=1,
                    default_root_dir=out_dir,
                )
                trainer.fit(module, datamodule=datamodule)
            # L-BFGS runs one epoch, whose one checkpoint holds the state the module already has.
            if checkpoint.best_model_path and not lbfgs:
                state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
                module.load_state_dict(state)
            epochs, steps = trainer.current_epoch, trainer.global_step
        probe = module.probe
        details: dict[str, Any] = {
            "optimizer": optimizer.value,
            "device": device,
            "precision": precision,
            "trainer_precision": trainer_precision,
            "activation_dtype": str(datamodule.dtype).removeprefix("torch."),
            "epochs": epochs,
            "optimizer_steps": steps,
            **stages,
        }
        if lbfgs:
            details |= {
                "iterations": module.lbfgs_iterations,
                "evaluations": module.lbfgs_evaluations,
                "converged": module.lbfgs_converged,
                "optimize_seconds": module.lbfgs_seconds,
                "capture_seconds": module.capture_seconds,
            }
            if not module.lbfgs_converged:
                log.warning("L-BFGS did not converge in probe.max_iterations=%d iterations", self.config.max_iterations)
        weights, biases = probe.raw_weight().reshape(len(regularizations), -1), probe.raw_biases()
        return [FitResult(ProbeWeights(w.numpy(), float(b)), details) for w, b in zip(weights, biases, strict=True)]

    def _module(
        self,
        train: ActivationDataset,
        optimizer: OptimizerName,
        regularizations: list[float],
        moments: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> ProbeModule:
        """The module for this data, on the CPU: one column per regularization value, each in its
        own preconditioned coordinates (`ProbeModule.precondition`), all starting at the best
        constant predictor. moments: the training split's per-feature (mean, std), computed here
        when not given."""
        mean, std = moments if moments is not None else feature_moments(train)
        module = self._initial_module(train, optimizer, regularizations)
        module.precondition(torch.as_tensor(mean), torch.as_tensor(std), standardize=self.config.standardize)
        return module

    def _initial_module(
        self, train: ActivationDataset, optimizer: OptimizerName, regularizations: list[float]
    ) -> ProbeModule:
        """The module before `precondition`: parameters at the best constant predictor."""
        probe = LinearProbe(self.input_dim, outputs=len(regularizations))
        positives = float(np.mean(train.labels))
        with torch.no_grad():
            probe.linear.bias.fill_(math.log(positives / (1.0 - positives)))
        return ProbeModule(
            probe,
            regularization=list(regularizations),
            n_train=len(train),
            optimizer=optimizer,
            learning_rate=self.config.learning_rate,
            max_iterations=self.config.max_iterations,
        )
