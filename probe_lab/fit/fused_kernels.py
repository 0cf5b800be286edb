"""The Triton kernel of `probe_lab.fit.fused_logistic`: loss and gradient sums of rows read once.

A persistent grid: program p takes the groups of BLOCK_ROWS rows p, p + P, p + 2P, … Each group's
whole rows are loaded into registers once; their logits, loss and residual pᵢ − yᵢ are computed, and
residualᵀ·rows is added to the program's gradient sum, which stays in registers until the program
stores it in its row of `grad_w` (P, D). The caller sums the programs' parts.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _loss_and_residual(logits, labels):
    """ℓ(y, z) = max(z, 0) − z·y + log(1 + e^−|z|), and ∂ℓ/∂z = σ(z) − y."""
    loss = tl.maximum(logits, 0.0) - logits * labels + tl.log(1.0 + tl.exp(-tl.abs(logits)))
    return loss, tl.sigmoid(logits) - labels


# The row count varies from block to block (the last is short): one compiled kernel serves them all.
@triton.jit(do_not_specialize=["rows"])
def loss_and_gradient_sums(
    x_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    loss_ptr,
    grad_w_ptr,
    grad_b_ptr,
    rows,
    dim,
    row_stride,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    """BLOCK_DIM ≥ dim, a power of two: the padded width of a row."""
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    row_offsets = tl.arange(0, BLOCK_ROWS)
    feature = tl.arange(0, BLOCK_DIM)
    in_dim = feature < dim
    w = tl.load(w_ptr + feature, mask=in_dim, other=0.0)
    bias = tl.load(b_ptr)
    grad = tl.zeros((BLOCK_DIM,), dtype=tl.float32)
    loss_sum = tl.zeros((BLOCK_ROWS,), dtype=tl.float64)
    residual_sum = tl.zeros((BLOCK_ROWS,), dtype=tl.float64)
    for group in range(program, tl.cdiv(rows, BLOCK_ROWS), programs):
        row = group * BLOCK_ROWS + row_offsets
        in_rows = row < rows
        x_ptrs = x_ptr + row.to(tl.int64)[:, None] * row_stride + feature[None, :]
        x = tl.load(x_ptrs, mask=in_rows[:, None] & in_dim[None, :], other=0.0).to(tl.float32)
        logits = tl.sum(x * w[None, :], axis=1) + bias
        labels = tl.load(y_ptr + row, mask=in_rows, other=0).to(tl.float32)
        loss, residual = _loss_and_residual(logits, labels)
        residual = tl.where(in_rows, residual, 0.0)
        loss_sum += tl.where(in_rows, loss, 0.0).to(tl.float64)
        residual_sum += residual.to(tl.float64)
        grad += tl.sum(residual[:, None] * x, axis=0)
    tl.store(grad_w_ptr + program.to(tl.int64) * dim + feature, grad, mask=in_dim)
    tl.store(loss_ptr + program, tl.sum(loss_sum, axis=0))
    tl.store(grad_b_ptr + program, tl.sum(residual_sum, axis=0))
