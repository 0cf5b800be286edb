"""`LinearProbe`: nn.Linear(D, 1) fitted in a well-conditioned coordinate system (or nn.Linear(D, K):
K probes trained side by side, one per regularization value of a path).

Activations of real models are badly conditioned (a few dimensions tens of times larger than the
rest, a mean far from zero). The probe keeps the seed's `nn.Linear(input_dim, 1)` as its parameters,
but reads them in shifted and rescaled coordinates:

    logit = linear((x - center) / scale) = x · (u / scale) + (c - (u / scale) · center)

so gradient methods see a problem whose curvature is about the same in every direction, while the
function of raw activations is still a plain linear map (`raw_weight`, `raw_bias`). The shift and
scale are folded into the weights, so no standardized copy of the data is ever made.

Activations may be stored in half precision; the logits and gradients are always accumulated in
float32 (`_Float32Linear`), so mixed precision changes memory and bandwidth, not the optimum. On a
GPU, half-precision activations are multiplied in place by cuBLAS with float32 output (one read of
the data per product); the float32 operand travels as a sum of half-precision terms (`_split_terms`).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

# Rows per block when up-casting half-precision activations: large enough to keep the GPU busy,
# small enough that the float32 copy of a block stays in cache instead of doubling memory use.
_BLOCK_ROWS = 16384
_OUTPUT_COLUMNS = 16
# Rows of X per gradient product on a GPU (`blocked_gradient_product`).
_GRADIENT_BLOCK_ROWS = 1 << 16


class _Float32Linear(torch.autograd.Function):
    """x @ w + b for x of any float dtype and float32 w (D,) or (D, K); float32 math, and no float32
    copy of x saved.

    Autocast would run this product in float16, where per-sample gradients (p - y) / N underflow for
    large N; up-casting block by block keeps float32 accuracy at half-precision storage cost.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        weight, bias = weight.float(), bias.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            if _fused_half(x):
                columns = weight.reshape(len(weight), -1)  # (D, K)
                return (bias + _half_left(x, columns)).reshape(x.shape[0], *weight.shape[1:])
            if x.dtype == weight.dtype:
                return _affine(bias, x, weight)
            out = torch.empty((x.shape[0], *weight.shape[1:]), dtype=weight.dtype, device=x.device)
            for start in range(0, x.shape[0], _BLOCK_ROWS):
                block = x[start : start + _BLOCK_ROWS].to(weight.dtype)
                _affine(bias, block, weight, out=out[start : start + _BLOCK_ROWS])
            return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        grad_out = grad_out.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            # Gradients are accumulated as gᵀx (K, D) rather than xᵀg: CPU BLAS runs the product with a
            # transposed x several times slower, and for one probe (K = 1) it is a matrix-vector product.
            if _fused_half(x):
                grad_t = _half_right(grad_out.reshape(len(grad_out), -1).T, x)  # (K, D)
                grad_t = grad_t[0] if grad_out.ndim == 1 else grad_t
            elif x.dtype == grad_out.dtype:
                grad_t = grad_out @ x if grad_out.ndim == 1 else grad_out.T @ x
            else:
                grad_t = torch.zeros((*grad_out.shape[1:], x.shape[1]), dtype=grad_out.dtype, device=x.device)
                for start in range(0, x.shape[0], _BLOCK_ROWS):
                    block = x[start : start + _BLOCK_ROWS].to(grad_out.dtype)
                    grad = grad_out[start : start + _BLOCK_ROWS]
                    if grad.ndim == 1:
                        grad_t.addmv_(block.T, grad)
                    else:
                        grad_t.addmm_(grad.T, block)
        grad_weight = grad_t if grad_t.ndim == 1 else grad_t.T
        grad_bias = grad_out.sum(0).reshape(-1)
        return None, grad_weight, grad_bias


def _fused_half(x: torch.Tensor) -> bool:
    """Whether x's products run as half-precision cuBLAS products with float32 output."""
    return x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and _cuda_half_products(x.device, x.dtype)


@functools.cache
def _cuda_half_products(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch build multiplies `dtype` matrices on `device` into float32 (torch ≥ 2.8)."""
    one = torch.ones((1, 1), dtype=dtype, device=device)
    try:
        return torch.mm(one, one, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False


def _split_terms(values: torch.Tensor, dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor]:
    """float32 values as a sum of terms in `dtype`: two in float16 (22 bits), three in bfloat16
    (24 bits), after scaling by a power of two that puts the largest at 2¹⁴, where float16 cannot
    overflow. Every value is carried to about 2⁻²² of the largest (tiny ones become subnormal, which
    costs nothing at that scale). Returns (terms, scale); the scale stays a device tensor, so there
    is no host sync."""
    peak = values.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
    # Clamped so that all-zero values (the probe's start) get a finite scale.
    scale = torch.exp2((14.0 - torch.ceil(torch.log2(peak))).clamp(-100.0, 100.0))
    rest = values * scale
    terms = []
    for _ in range(2 if dtype == torch.float16 else 3):
        term = rest.to(dtype)
        terms.append(term)
        rest = rest - term.float()
    return terms, scale


def _half_left(x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """x (N, D) half @ columns (D, K) float32 → (N, K) float32, reading x once."""
    terms, scale = _split_terms(columns, x.dtype)
    k = columns.shape[1]
    # Zero columns up to a multiple of 16: cuBLAS then picks a kernel that reads X near the copy
    # bandwidth, against two-thirds of it for 2 columns (benchmarks/half_products.py, H200).
    padding = columns.new_zeros((columns.shape[0], -len(terms) * k % _OUTPUT_COLUMNS), dtype=x.dtype)
    products = torch.mm(x, torch.cat([*terms, padding], dim=1), out_dtype=torch.float32)
    return sum(products[:, i * k : (i + 1) * k] for i in range(len(terms))) / scale


def _half_right(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """rows (K, N) float32 @ x (N, D) half → (K, D) float32, reading x once."""
    terms, scale = _split_terms(rows, x.dtype)
    products = blocked_gradient_product(torch.cat(terms, dim=0), x)
    k = rows.shape[0]
    return sum(products[i * k : (i + 1) * k] for i in range(len(terms))) / scale


def blocked_gradient_product(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """rows (R, N) @ x (N, D), both of one half-precision dtype (the caller's guarantee), → (R, D)
    float32: the sum of the products of blocks of _GRADIENT_BLOCK_ROWS rows of x, each with a
    contiguous copy of its columns of `rows`.

    For a few rows against long x, cuBLAS's kernel for one long product reads x far below the copy
    bandwidth at some N; blocks of contiguous rows keep it near the bandwidth at every N, and the
    columns of `rows` are copied per block because strided views were as slow as one product
    (benchmarks/half_products.py measures the variants).
    """
    total = None
    for start in range(0, len(x), _GRADIENT_BLOCK_ROWS):
        block = slice(start, start + _GRADIENT_BLOCK_ROWS)
        product = torch.mm(rows[:, block].contiguous(), x[block], out_dtype=torch.float32)
        total = product if total is None else total.add_(product)
    if total is None:  # no rows
        return torch.zeros((rows.shape[0], x.shape[1]), dtype=torch.float32, device=x.device)
    return total


def _affine(
    bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """bias + x @ weight, for a weight vector (D,) or matrix (D, K)."""
    product = torch.addmv if weight.ndim == 1 else torch.addmm
    return product(bias, x, weight) if out is None else product(bias, x, weight, out=out)


class LinearProbe(nn.Module):
    """A linear probe: logits = w · x + b on raw activations of width `input_dim`.

    `linear` holds the trainable parameters in the conditioned coordinates set by
    `set_coordinates(center, scale)`; with the defaults (center 0, scale 1) it is exactly the seed's
    nn.Linear. Parameters start at zero: the probe's objective is convex, so the start only changes
    how long the optimizer walks, and zeros make runs reproducible.

    outputs=K > 1 holds K probes side by side (logits (B, K)), each with its own scale (K, D).
    """

    def __init__(self, input_dim: int, outputs: int = 1) -> None:
        super().__init__()
        if input_dim <= 0 or outputs <= 0:
            raise ValueError(f"input_dim and outputs must be positive, got {input_dim} and {outputs}")
        self.input_dim = input_dim
        self.outputs = outputs
        self.linear = nn.Linear(input_dim, outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("center", torch.zeros(input_dim))
        self.register_buffer("scale", torch.ones(input_dim) if outputs == 1 else torch.ones(outputs, input_dim))

    def set_coordinates(self, center: torch.Tensor, scale: torch.Tensor) -> None:
        """Choose the shift (D,) and positive scale ((D,), or (K, D) per probe) the parameters are
        expressed in; resets nothing else."""
        self.center.copy_(center.to(self.center))
        scale = scale.to(self.scale)
        same_size = scale.numel() == self.scale.numel()
        self.scale.copy_(scale.reshape(self.scale.shape) if same_size else scale.expand_as(self.scale))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) acting on raw activations, differentiable in the parameters: (D,) and (1,)
        for one probe, (K, D) and (K,) for K."""
        # Outside autocast: a half-precision weight · center would put its rounding error into every logit.
        with torch.autocast(device_type=self.scale.device.type, enabled=False):
            weight = self.linear.weight.float() / self.scale
            bias = self.linear.bias.float() - weight @ self.center
        return (weight[0], bias) if self.outputs == 1 else (weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B,) — or (B, K) for K probes — for activations x (B, D) in any float dtype."""
        weight, bias = self.folded()
        return _Float32Linear.apply(x, weight if self.outputs == 1 else weight.T, bias)

    @torch.no_grad()
    def raw_weight(self) -> torch.Tensor:
        return self.folded()[0].detach().float().cpu()

    @torch.no_grad()
    def raw_bias(self) -> float:
        return float(self.folded()[1].item())

    @torch.no_grad()
    def raw_biases(self) -> torch.Tensor:
        return self.folded()[1].detach().float().cpu().reshape(-1)

    @torch.no_grad()
    def load_raw(self, weight: torch.Tensor, bias: float) -> None:
        """Set the parameters so that the (single) probe computes `weight · x + bias` on raw activations."""
        scaled = weight.to(self.scale) * self.scale
        self.linear.weight.copy_(scaled.unsqueeze(0))
        self.linear.bias.fill_(bias + float((weight.to(self.center) * self.center).sum()))
