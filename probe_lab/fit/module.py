"""`ProbeModule`: the LightningModule that minimizes `ProbeObjective` for a `LinearProbe`.

`optimizer=lbfgs` runs full-batch L-BFGS (scipy's L-BFGS-B, sklearn's optimizer) to convergence in
one optimizer step of one epoch: its line search needs the exact objective and gradient, so there are
no minibatches. `optimizer=adamw` trains on streamed minibatches with Lightning's automatic
optimization (gradient accumulation, EarlyStopping and checkpointing as configured). It logs
`train_loss` and `val_auroc` (with a regularization path, the best column's).

In a data-parallel fit each process's module sees its shard of the rows: the shards' feature
statistics are combined in `setup`, once the processes are up, and L-BFGS runs over all shards
(`probe_lab.fit.distributed`).
"""

from __future__ import annotations

import logging
import math
import time

import lightning.pytorch as pl
import numpy as np
import torch
from torchmetrics.classification import BinaryAUROC, MultilabelAUROC

from probe_lab.data.blocks import SplitBlocks
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.stats import column_moments, combine_moments
from probe_lab.fit.distributed import DataParallelEvaluation, FitGroup, LBFGSControl, Shard
from probe_lab.fit.evaluation import Evaluation, StreamedEvaluation
from probe_lab.fit.lbfgsb import ScipyLBFGSB
from probe_lab.fit.linear_probe import LinearProbe
from probe_lab.fit.objective import ProbeObjective, preconditioner_statistics
from probe_lab.settings import OptimizerName, ProbeTrainingConfig

log = logging.getLogger(__name__)

# L-BFGS stops when the largest gradient entry or the change in the objective falls below these.
LBFGS_TOLERANCE_GRAD = 1e-5
LBFGS_TOLERANCE_CHANGE = 1e-10
LBFGS_HISTORY = 20


class ProbeModule(pl.LightningModule):
    """A probe of K columns (one per regularization value) and its objective, summed over the columns
    so that one pass over the data serves the whole path."""

    def __init__(
        self,
        probe: LinearProbe,
        objective: ProbeObjective,
        *,
        optimizer: OptimizerName,
        learning_rate: float,
        max_iterations: int,
    ) -> None:
        super().__init__()
        self.probe = probe
        self.objective = objective
        self.optimizer_name = optimizer
        self.learning_rate = learning_rate
        self.max_iterations = max_iterations
        self.automatic_optimization = optimizer is not OptimizerName.lbfgs
        paths = probe.outputs
        self.val_auroc = BinaryAUROC() if paths == 1 else MultilabelAUROC(num_labels=paths, average="none")
        self.lbfgs_iterations = 0
        self.lbfgs_evaluations = 0
        self.lbfgs_converged = False
        self.lbfgs_seconds = 0.0
        self.capture_seconds = 0.0  # capturing the CUDA graph of an evaluation
        self.group: FitGroup | None = None  # the processes of a data-parallel fit
        self._shard_statistics: tuple[int, torch.Tensor, torch.Tensor, bool] | None = None
        # A full-batch fit's validation logits, block by block as validated (it validates once, after
        # L-BFGS has stopped), so that the split need not be read again to score it.
        self.val_logits: list[torch.Tensor] = []

    @classmethod
    def at_best_constant(
        cls,
        input_dim: int,
        labels: np.ndarray,
        regularizations: list[float],
        *,
        optimizer: OptimizerName,
        learning_rate: float,
        max_iterations: int,
        column_rows: torch.Tensor | None = None,
    ) -> ProbeModule:
        """A module whose K columns start at the best constant predictor of `labels` (the training
        split's), in plain coordinates until `precondition`. column_rows: (N, K) bool, the rows each
        column is fitted on (`ProbeObjective`), when not every row."""
        probe = LinearProbe(input_dim, outputs=len(regularizations))
        positives = float(np.mean(labels))
        with torch.no_grad():
            probe.linear.bias.fill_(math.log(positives / (1.0 - positives)))
        objective = ProbeObjective(list(regularizations), len(labels), input_dim, column_rows=column_rows)
        return cls(probe, objective, optimizer=optimizer, learning_rate=learning_rate, max_iterations=max_iterations)

    def precondition(self, mean: torch.Tensor, std: torch.Tensor, *, standardize: bool) -> None:
        """The probe in the objective's conditioned coordinates for these feature statistics."""
        self.objective.precondition(self.probe, mean, std, standardize=standardize)

    def precondition_with_shards(self, rows: int, mean: torch.Tensor, std: torch.Tensor, *, standardize: bool) -> None:
        """A data-parallel fit: this process's shard's statistics (from `rows` rows), to be combined with
        the other processes' in `setup` before the probe is put in the conditioned coordinates."""
        self._shard_statistics = (rows, mean, std, standardize)

    def setup(self, stage: str) -> None:
        if self._shard_statistics is None or self.group is not None:
            return
        self.group = FitGroup(self.device)
        rows, mean, std, standardize = self._shard_statistics
        count = torch.tensor([float(rows)], dtype=torch.float64, device=mean.device)
        parts = self.group.all_gather(torch.cat([count, mean, std]).to(self.group.device))
        dim = len(mean)
        mean, std = combine_moments(parts[:, 0], parts[:, 1 : 1 + dim], parts[:, 1 + dim :])
        self.precondition(mean, std, standardize=standardize)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The objective of the batch, a float64 scalar."""
        return self.objective(self.probe, x, y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor] | SplitBlocks, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, SplitBlocks):  # full batch, read block by block at each evaluation
            penalty = None if self.group is not None else self.penalty
            rows = self.objective.n_train  # the whole split's, whatever this process holds
            return self._lbfgs_step(StreamedEvaluation(self, self.loss_sum, penalty, batch, rows))
        x, y = batch
        if self.automatic_optimization:  # AdamW: one minibatch
            loss = self.loss(x, y)
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
            return loss
        if self.group is not None:
            rows = self.objective.n_train
            return self._lbfgs_step(Evaluation(self, lambda: self.loss_sum(x, y) / rows, x.device))
        return self._lbfgs_step(Evaluation(self, lambda: self.loss(x, y), x.device))

    def loss_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sum of the block's row losses over its rows and the columns, a float64 scalar."""
        return self.objective.loss_sum(self.probe, x, y)

    def penalty(self) -> torch.Tensor:
        return self.objective.penalty(self.probe)

    def _lbfgs_step(self, local: Evaluation | StreamedEvaluation) -> torch.Tensor:
        """Full-batch L-BFGS to convergence in one manual optimizer step. L-BFGS-B calls the closure once
        per evaluation, each ending in a host sync, so the closure does only the evaluation (on a GPU
        one CUDA-graph replay of resident data, or one pass over the split's blocks): Lightning counts
        the one step, and checkpointing follows it. In a data-parallel fit, `local` covers this
        process's shard without the penalty, and every process takes the step together."""
        evaluate = local if self.group is None else DataParallelEvaluation(self, local, self.penalty, self.group)
        optimizer = self.optimizers()
        lbfgs = optimizer.optimizer
        start = time.perf_counter()
        loss = optimizer.step(closure=evaluate)  # the objective where L-BFGS stopped
        self.lbfgs_seconds = time.perf_counter() - start
        self.capture_seconds = evaluate.capture_seconds
        result = lbfgs.result
        self.lbfgs_iterations, self.lbfgs_evaluations = int(result.nit), int(result.nfev)
        self.lbfgs_converged = lbfgs.converged
        if result.status != 0 and (self.group is None or self.group.leads):
            (log.info if self.lbfgs_converged else log.warning)("L-BFGS-B stopped: %s", result.message)
        rows = self.objective.n_train
        self.log("train_loss", float(loss), on_step=True, on_epoch=False, prog_bar=True, batch_size=rows)
        self.log("lbfgs_iterations", float(self.lbfgs_iterations), on_step=True, on_epoch=False)
        if self.lbfgs_converged:
            self.trainer.should_stop = True
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_logits = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.probe(x)
        if not self.automatic_optimization:
            self.val_logits.append(logits.detach())
        if logits.ndim == 2:
            self.val_auroc.update(logits, y.long()[:, None].expand_as(logits))
            return
        self.val_auroc.update(logits, y.long())
        self.log("val_auroc", self.val_auroc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        if isinstance(self.val_auroc, MultilabelAUROC):
            self.log("val_auroc", self.val_auroc.compute().max(), prog_bar=True)
            self.val_auroc.reset()

    def validated_logits(self, order: np.ndarray) -> torch.Tensor | None:
        """(N, K) float32 logits of the last validation of a full-batch fit, in the validation split's
        own row order, given `order`, the positions of the rows as they were validated; None when the
        last validation did not cover those rows (or the fit is minibatch AdamW, which goes on to load
        its best checkpoint)."""
        if self.automatic_optimization or not self.val_logits:
            return None
        logits = torch.cat(self.val_logits).reshape(-1, self.probe.outputs)
        if len(logits) != len(order):
            return None
        scores = torch.empty_like(logits)
        scores[torch.from_numpy(order).to(logits.device)] = logits
        return scores

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name is OptimizerName.lbfgs:
            lbfgs = ScipyLBFGSB(
                self.parameters(),
                max_iter=self.max_iterations,
                history_size=LBFGS_HISTORY,
                tolerance_grad=LBFGS_TOLERANCE_GRAD,
                tolerance_change=LBFGS_TOLERANCE_CHANGE,
            )
            if self.group is not None:
                lbfgs.control = LBFGSControl(self.group, lbfgs.trainable)
            return lbfgs
        # weight_decay=0: the penalty is in the objective; AdamW's decay would be another objective.
        return torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=0.0)


def prepared_module(
    train: ActivationDataset,
    regularizations: list[float],
    config: ProbeTrainingConfig,
    optimizer: OptimizerName,
    *,
    device: torch.device | str = "cpu",
    resident: torch.Tensor | None = None,
    shard: tuple[ActivationDataset, Shard] | None = None,
    column_rows: np.ndarray | None = None,
    blocks: SplitBlocks | None = None,
) -> ProbeModule:
    """The module a fit on `train` starts from: one column per regularization value at the best
    constant predictor, on `device`, in the coordinates preconditioned by the training split's
    statistics — taken from `resident` (the split, or this process's shard, held whole on `device`)
    when given, which on a GPU only queues them.

    shard: in a data-parallel fit, the part of `train` this process holds; its statistics are combined
    with the other processes' when the fit starts (`ProbeModule.setup`).
    column_rows: (N, K) bool, the rows of `train` each column is fitted on (cross-validation's folds,
    with `train` held whole in `resident`); standardized columns then take their own rows' statistics.
    blocks: the blocks a full-batch fit of a split that is not resident reads (`SplitBlocks`, of this
    process's shard), where the statistics' rows are taken from."""
    rows_on_device = None if column_rows is None else torch.from_numpy(column_rows).to(device)
    module = ProbeModule.at_best_constant(
        train.dim,
        train.labels,
        regularizations,
        optimizer=optimizer,
        learning_rate=config.learning_rate,
        max_iterations=config.max_iterations,
        column_rows=rows_on_device,
    ).to(device)
    part, where = shard if shard is not None else (train, None)
    if rows_on_device is not None and config.standardize:
        if resident is None:
            raise ValueError("column_rows needs the split held whole (resident)")
        means, std = column_moments(resident, rows_on_device)
        mean = means[0]  # any shift: the bias is unpenalized
    else:
        rows, mean, std = preconditioner_statistics(
            part, resident, standardize=config.standardize, device=device, shard=where, blocks=blocks
        )
    if shard is not None:
        module.precondition_with_shards(rows, mean, std, standardize=config.standardize)
    else:
        module.precondition(mean, std, standardize=config.standardize)
    return module
