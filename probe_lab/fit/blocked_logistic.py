"""The logistic loss sum and its gradient on the CPU, reading the rows from memory once.

`ProbeObjective.two_product_loss_sum` computes the logits of all rows (one read of x), then the gradient
(pᵢ − yᵢ)ᵀx (a second read). On the CPU the second read comes from memory too, since x is far larger
than any cache. `blocked_loss_sum` takes the rows a block at a time, a block small enough to stay in
cache (`CACHE_BLOCK_BYTES`). For each block it computes the logits, the row losses, the residuals and
the block's gradient contribution, so the gradient product reads the block from cache. K columns (a
regularization path) go through the same pass.

Arithmetic is that of the two-product path: float32 products (half-precision rows are up-cast a block
at a time), float32 row losses summed in float64, float64 bias-gradient sums, the weight gradient
accumulated in float32. benchmarks/cpu_evaluation.py compares the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probe_lab.fit.one_read import one_read_loss_sum

# Rows per block: about this many bytes of float32, which stay in a core's cache between the two products.
CACHE_BLOCK_BYTES = 4 << 20


def applies(x: torch.Tensor) -> bool:
    """Whether `blocked_loss_sum` evaluates rows `x`: on the CPU, (N, D), any float dtype."""
    return x.device.type == "cpu" and x.ndim == 2 and len(x) > 0 and x.is_floating_point()


def blocked_loss_sum(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Σᵢ Σₖ ℓ(yᵢ, xᵢ·wₖ + bₖ), a float64 scalar differentiable in `weight` ((D,) or (K, D)) and `bias`
    ((1,) or (K,)), for rows `x` (N, D) and labels `y` (N,) of 0/1, reading x once."""
    return one_read_loss_sum(loss_and_gradient, x, y, weight, bias)


def loss_and_gradient(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, block_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σ loss, a float64 scalar; ∂/∂w (K, D) float32; ∂/∂b (K,) float32) of rows x, read once.

    block_rows: rows per block (default: CACHE_BLOCK_BYTES of float32 rows)."""
    dim = x.shape[1]
    columns = weight.float().reshape(-1, dim).T.contiguous()  # (D, K)
    biases = bias.float().reshape(-1)
    k = columns.shape[1]
    step = block_rows or max(1, CACHE_BLOCK_BYTES // (4 * dim))
    loss = torch.zeros((), dtype=torch.float64)
    grad_weight = torch.zeros((k, dim), dtype=torch.float32)
    grad_bias = torch.zeros(k, dtype=torch.float64)
    labels = y.float()
    for start in range(0, len(x), step):
        block = x[start : start + step]
        block = block if block.dtype == torch.float32 else block.float()
        logits = torch.addmm(biases, block, columns)  # (rows, K)
        targets = labels[start : start + step, None].expand_as(logits)
        loss += F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dtype=torch.float64)
        residuals = torch.sigmoid(logits) - targets
        grad_weight.addmm_(residuals.T, block)
        grad_bias += residuals.sum(0, dtype=torch.float64)
    return loss, grad_weight, grad_bias.float()
