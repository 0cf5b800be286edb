"""The objective every backend minimizes, and the coordinates the pytorch backend minimizes it in.

sklearn's L2 logistic regression is ½‖w‖² + C·Σᵢ ℓ(yᵢ, w·xᵢ + b), C = 1/regularization, with the
bias unpenalized and ℓ the binary cross-entropy of the logit. Dividing by C·N leaves its minimizer
where it is and gives

    J(w, b) = (1/N) Σᵢ ℓ(yᵢ, w·xᵢ + b) + (regularization / 2N) · ‖w‖²

which `ProbeObjective` computes: its minimizer is sklearn's. With `standardize=true` the penalty is
on the weights of standardized features, (regularization / 2N)·‖w ⊙ σ‖² — sklearn on
StandardScaler features, another penalty geometry; the exported probe still acts on raw activations.

The probe is optimized in conditioned coordinates (`LinearProbe.set_coordinates`): u = w ⊙ s on
x − μ, where J's penalty reads Σⱼ qⱼ uⱼ² with

    raw features:   s² = σ² + 4·regularization/N,  q = 1/s²
    standardized:   s = σ (1 for a constant feature), q = 1

At the start (every probability at the positive rate π) the Hessian's diagonal in u is
π(1−π)·σ²/s² + (regularization/N)/s², which for raw features is π(1−π) ≤ ¼ for balanced labels in
every coordinate whatever its scale: a diagonal (Jacobi) preconditioner, so L-BFGS converges in tens
of evaluations on activations with outlier dimensions. A change of coordinates moves no minimizer.
K regularization values are K independent objectives summed over the columns of one (D, K) probe.
Cross-validation's folds are more columns of the same kind: with `column_rows`, column c is J over
its own rows of the split (its fold's training rows, nᶜ of them) with its own regularization / 2nᶜ,
so one pass over the whole split per evaluation serves every fold's path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probe_lab.data.blocks import SplitBlocks
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.stats import block_moments, device_moments, evenly_spaced_rows, feature_moments
from probe_lab.fit import blocked_logistic, fused_logistic
from probe_lab.fit.distributed import Shard
from probe_lab.fit.linear_probe import LinearProbe

# Rows sampled for the statistics of raw features, which only center and precondition (a few percent
# of error there moves no optimum); standardize=true uses every row, as its statistics define J.
PRECONDITIONER_ROWS = 16384


class ProbeObjective(nn.Module):
    """J of a `LinearProbe` with one column per regularization value, over `n_train` rows.

    column_rows: (n_train, K) bool, which rows each column is fitted on (every row by default); the
    batches are then always the whole split, in its order (a resident full-batch fit).
    Buffers: `penalty_weights` (K, D), the q of each column (1 until `precondition`), and
    `penalty_coef` (K, 1), regularization / 2N (2nᶜ with `column_rows`).
    """

    def __init__(
        self, regularization: list[float], n_train: int, dim: int, *, column_rows: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.n_train = n_train
        self.register_buffer("penalty_weights", torch.ones(len(regularization), dim))
        rows = torch.full((len(regularization), 1), float(n_train), dtype=torch.float64)
        self.register_buffer("row_weights", None, persistent=False)
        if column_rows is not None:
            if column_rows.shape != (n_train, len(regularization)):
                raise ValueError(
                    f"column_rows must be ({n_train}, {len(regularization)}), got {tuple(column_rows.shape)}"
                )
            rows = column_rows.sum(0, dtype=torch.float64).reshape(-1, 1)
            # 1/nᶜ on a column's rows, 0 elsewhere; derived and large, so not in checkpoints.
            self.row_weights = column_rows.float() / rows.T.to(column_rows.device).float()
        # reg / N per column in float64, for the preconditioner; derived, so not in checkpoints.
        reg_over_n = torch.tensor(regularization, dtype=torch.float64).reshape(-1, 1) / rows.to("cpu")
        self.register_buffer("reg_over_n", reg_over_n, persistent=False)
        self.register_buffer("penalty_coef", (reg_over_n / 2.0).float())

    @torch.no_grad()
    def precondition(self, probe: LinearProbe, mean: torch.Tensor, std: torch.Tensor, *, standardize: bool) -> None:
        """Put `probe` in the coordinates of the module docstring for features of this `mean` and `std`
        (D,) — std may be (K, D), one per column, for standardized columns fitted on different rows —
        and set q to match. Computed in float64 where this module lives, without reading anything
        back to the host: on a GPU the statistics' kernels may still be running."""
        device = self.penalty_weights.device
        mean, std = mean.to(device, torch.float64), std.to(device, torch.float64)
        if standardize:
            scale = torch.where(std > 0, std, 1.0).expand_as(self.penalty_weights)
            penalty_weights = torch.ones_like(scale)
        else:
            scale = (std**2 + 4.0 * self.reg_over_n).sqrt()
            penalty_weights = scale**-2
        probe.set_coordinates(mean, scale)
        self.penalty_weights.copy_(penalty_weights)

    def forward(self, probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """J of the batch (x, y), summed over the columns, as a float64 scalar."""
        if self.row_weights is not None:
            return self.column_loss(probe, x, y) + self.penalty(probe)
        return self.loss_sum(probe, x, y) / len(x) + self.penalty(probe)

    def column_loss(self, probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Σ over columns of each column's mean row loss over its own rows (the whole split, x)."""
        assert self.row_weights is not None
        if len(x) != len(self.row_weights):
            raise ValueError(
                f"a fit with column_rows takes the whole split ({len(self.row_weights)} rows), got {len(x)}"
            )
        logits = probe(x)
        row_losses = F.binary_cross_entropy_with_logits(logits, y.float()[:, None].expand_as(logits), reduction="none")
        return (row_losses * self.row_weights).sum(dtype=torch.float64)

    def loss_sum(self, probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Σᵢ ℓ(yᵢ, logitᵢ) over the rows of (x, y) and the columns, a float64 scalar: J over N rows is
        the sum over their blocks divided by N, plus `penalty` once.

        Each row's loss is float32; their sum is float64, so the objective's rounding stays far below
        the decreases L-BFGS's line search has to see near the optimum. For one probe, half-precision
        rows on a GPU are read once for the loss and its gradient (`fused_logistic`), and rows on the
        CPU are read once a cache-sized block at a time, for any number of columns (`blocked_logistic`);
        otherwise (a path on a GPU, float32 rows on a GPU) the two products read them twice.
        """
        if self.row_weights is not None:
            raise ValueError("a fit with column_rows is evaluated whole (forward), not block by block")
        if fused_logistic.applies(x, probe.outputs):
            weight, bias = probe.folded()
            return fused_logistic.fused_loss_sum(x, y, weight, bias)
        if blocked_logistic.applies(x):
            weight, bias = probe.folded()
            return blocked_logistic.blocked_loss_sum(x, y, weight, bias)
        return self.two_product_loss_sum(probe, x, y)

    def two_product_loss_sum(self, probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`loss_sum` through the probe's forward pass and autograd: one product for the logits, one for
        the gradient."""
        logits = probe(x)
        targets = y.float()[:, None].expand_as(logits) if logits.ndim == 2 else y.float()
        row_losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return row_losses.sum(dtype=torch.float64)

    def penalty(self, probe: LinearProbe) -> torch.Tensor:
        """The penalty of every column, summed, a float64 scalar."""
        u = probe.linear.weight
        return (self.penalty_coef * self.penalty_weights * u * u).sum(dtype=torch.float64)


def preconditioner_statistics(
    train: ActivationDataset,
    resident: torch.Tensor | None,
    *,
    standardize: bool,
    device: torch.device | str = "cpu",
    shard: Shard | None = None,
    blocks: SplitBlocks | None = None,
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(rows, mean, std) of the training split's features, float64: how many rows they are estimated
    from, and their statistics. Raw features take them from PRECONDITIONER_ROWS evenly spaced rows: of
    the resident copy where it lives, else of `blocks` (the split as a full-batch fit reads it, where
    its first pass put it: on the device, in host memory, or still in storage), else read from
    storage and moved to `device`. Standardized features take every row: of the resident copy, else
    in one pass over `blocks`, else in one streaming pass over the split.

    shard: `train` is this shard of the whole split (a data-parallel fit), and takes those of the
    whole split's sampled rows that fall in it (every row, standardized); the shards' statistics
    combine (`combine_moments`) into the whole split's.
    """
    if standardize:
        if resident is not None:
            mean, std = device_moments(resident)
        elif blocks is not None:
            mean, std = block_moments((x for x, _ in blocks), train.dim, blocks.device)
        else:
            mean, std = feature_moments(train)
        return len(train), mean, std
    spaced = evenly_spaced_rows(shard.of if shard is not None else len(train), PRECONDITIONER_ROWS)
    if shard is not None:
        spaced = spaced[(spaced >= shard.rows.start) & (spaced < shard.rows.stop)] - shard.rows.start
    if resident is not None:
        mean, std = device_moments(resident, rows=spaced)
    elif blocks is not None:
        mean, std = device_moments(blocks.rows_at(spaced.numpy()))
    else:
        mean, std = device_moments(train.read(spaced.numpy()).to(device))
    return len(spaced), mean, std
