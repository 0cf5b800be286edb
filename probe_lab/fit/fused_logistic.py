"""The logistic loss sum of half-precision rows and its gradient, for one probe, reading the rows once.

`ProbeObjective.two_product_loss_sum` computes Σᵢ ℓ(yᵢ, xᵢ·w + b) with two products: the logits (one
read of x), then the gradient (pᵢ − yᵢ)ᵀx (a second read). On a GPU both are bound by memory, so an
evaluation costs two reads of the split. `fused_loss_sum` computes the loss, the residuals and the
gradient in one Triton kernel (`fused_kernels`): a few whole rows at a time are loaded into registers
and used for both, so device memory is read once per evaluation.

Arithmetic: float32 products and per-row losses, float64 sums over rows of the loss and of the bias
gradient, as in the two-product path.

Only one probe (one regularization value): its weight vector and gradient sum fit in a program's
registers beside the rows. K columns would need K of each, so a regularization path keeps the two
products, which read x twice for all K columns together.

This is a kernel of our own because no library computes a loss and its gradient in one read of the
data; it runs on CUDA devices with Triton (part of PyTorch's CUDA builds) and is not used elsewhere.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch

from probe_lab.fit.one_read import one_read_loss_sum

# Elements (rows × padded width) a program holds in registers per group of rows (2 rows of 8192), and
# the widest rows the kernel takes (padded, one row per group, with more warps).
GROUP_ELEMENTS = 16384
MAX_WIDTH = 32768

_TRITON = importlib.util.find_spec("triton") is not None


def applies(x: torch.Tensor, columns: int) -> bool:
    """Whether `fused_loss_sum` evaluates rows `x` for a probe of `columns` columns."""
    return (
        _TRITON
        and columns == 1
        and x.is_cuda
        and x.dtype in (torch.float16, torch.bfloat16)
        and x.ndim == 2
        and 0 < x.shape[1] <= MAX_WIDTH
        and x.stride(1) == 1
        and len(x) > 0
    )


def fused_loss_sum(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Σᵢ ℓ(yᵢ, xᵢ·w + b), a float64 scalar differentiable in `weight` (D,) and `bias` (1,), for rows
    `x` (N, D) in half precision and labels `y` (N,) of 0/1."""
    return one_read_loss_sum(loss_and_gradient, x, y, weight, bias)


@dataclass(frozen=True)
class LaunchShape:
    """`programs` persistent programs of `warps` warps, each taking `block_rows` rows at a time, their
    width padded to `block_dim` (a power of two)."""

    programs: int
    block_rows: int
    block_dim: int
    warps: int = 4


@functools.cache
def launch_shape(device: torch.device, dim: int) -> LaunchShape:
    """Two programs per multiprocessor, each holding GROUP_ELEMENTS elements of rows (2 rows of 8192)
    with 4 warps, or one wider row with a warp more per 4096 elements: the fastest of the shapes
    benchmarks/fused_evaluation.py --shapes times on an H200 (more elements per warp do not compile)."""
    block_dim = 1 << max(0, dim - 1).bit_length()
    block_rows = max(1, GROUP_ELEMENTS // block_dim)
    warps = max(4, block_rows * block_dim // 4096)
    programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return LaunchShape(programs, block_rows, block_dim, warps)


def loss_and_gradient(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, launch: LaunchShape | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σ loss, a float64 scalar; ∂/∂w (D,) float32; ∂/∂b (1,) float32) of rows x, read once.

    launch: the grid and block shape (default: `launch_shape` for this device and width)."""
    dim = x.shape[1]
    shape = launch or launch_shape(x.device, dim)
    loss_parts = torch.empty(shape.programs, dtype=torch.float64, device=x.device)
    grad_bias_parts = torch.empty(shape.programs, dtype=torch.float64, device=x.device)
    grad_weight_parts = torch.empty((shape.programs, dim), dtype=torch.float32, device=x.device)
    _kernels().loss_and_gradient_sums[(shape.programs,)](
        x,
        y.contiguous(),
        weight.float().reshape(-1).contiguous(),
        bias.float().reshape(-1).contiguous(),
        loss_parts,
        grad_weight_parts,
        grad_bias_parts,
        len(x),
        dim,
        x.stride(0),
        BLOCK_ROWS=shape.block_rows,
        BLOCK_DIM=shape.block_dim,
        num_warps=shape.warps,
    )
    return loss_parts.sum(), grad_weight_parts.sum(0), grad_bias_parts.sum().float().reshape(1)


@functools.cache
def _kernels():
    """The Triton kernels, imported on first use (importing Triton takes a while)."""
    from probe_lab.fit import fused_kernels

    return fused_kernels
