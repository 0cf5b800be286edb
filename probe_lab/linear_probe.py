"""`LinearProbe`: nn.Linear(D, 1) fitted in a well-conditioned coordinate system.

Activations of real models are badly conditioned (a few dimensions tens of times larger than the
rest, a mean far from zero). The probe keeps the seed's `nn.Linear(input_dim, 1)` as its parameters,
but reads them in shifted and rescaled coordinates:

    logit = linear((x - center) / scale) = x · (u / scale) + (c - (u / scale) · center)

so gradient methods see a problem whose curvature is about the same in every direction, while the
function of raw activations is still a plain linear map (`raw_weight`, `raw_bias`). The shift and
scale are folded into the weights, so no standardized copy of the data is ever made.

Activations may be stored in half precision; the logits and gradients are always accumulated in
float32 (`_Float32Linear`), so mixed precision changes memory and bandwidth, not the optimum.
"""

from __future__ import annotations

import torch
from torch import nn

# Rows per block when up-casting half-precision activations: large enough to keep the GPU busy,
# small enough that the float32 copy of a block stays in cache instead of doubling memory use.
_BLOCK_ROWS = 16384


class _Float32Linear(torch.autograd.Function):
    """x @ w + b for x of any float dtype and float32 w, b; float32 math, no float32 copy of x saved.

    Autocast would run this product in float16, where per-sample gradients (p - y) / N underflow for
    large N; up-casting block by block keeps float32 accuracy at half-precision storage cost.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        weight, bias = weight.float(), bias.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype == weight.dtype:
                return torch.addmv(bias, x, weight)
            out = torch.empty(x.shape[0], dtype=weight.dtype, device=x.device)
            for start in range(0, x.shape[0], _BLOCK_ROWS):
                block = x[start : start + _BLOCK_ROWS].to(weight.dtype)
                torch.addmv(bias, block, weight, out=out[start : start + _BLOCK_ROWS])
            return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        grad_out = grad_out.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype == grad_out.dtype:
                grad_weight = x.T @ grad_out
            else:
                grad_weight = torch.zeros(x.shape[1], dtype=grad_out.dtype, device=x.device)
                for start in range(0, x.shape[0], _BLOCK_ROWS):
                    block = x[start : start + _BLOCK_ROWS].to(grad_out.dtype)
                    grad_weight.addmv_(block.T, grad_out[start : start + _BLOCK_ROWS])
        return None, grad_weight, grad_out.sum().reshape(1)


class LinearProbe(nn.Module):
    """A linear probe: logits = w · x + b on raw activations of width `input_dim`.

    `linear` holds the trainable parameters in the conditioned coordinates set by
    `set_coordinates(center, scale)`; with the defaults (center 0, scale 1) it is exactly the seed's
    nn.Linear. Parameters start at zero: the probe's objective is convex, so the start only changes
    how long the optimizer walks, and zeros make runs reproducible.
    """

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        if input_dim <= 0:
            raise ValueError(f"input_dim must be positive, got {input_dim}")
        self.input_dim = input_dim
        self.linear = nn.Linear(input_dim, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("center", torch.zeros(input_dim))
        self.register_buffer("scale", torch.ones(input_dim))

    def set_coordinates(self, center: torch.Tensor, scale: torch.Tensor) -> None:
        """Choose the shift and (positive) scale the parameters are expressed in; resets nothing else."""
        self.center.copy_(center.to(self.center))
        self.scale.copy_(scale.to(self.scale))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (D,), bias (1,)) acting on raw activations, differentiable in the parameters."""
        weight = self.linear.weight[0] / self.scale
        bias = self.linear.bias - (weight * self.center).sum()
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for activations x (B, D) in any float dtype."""
        weight, bias = self.folded()
        return _Float32Linear.apply(x, weight, bias)

    @torch.no_grad()
    def raw_weight(self) -> torch.Tensor:
        return self.folded()[0].detach().float().cpu()

    @torch.no_grad()
    def raw_bias(self) -> float:
        return float(self.folded()[1].item())

    @torch.no_grad()
    def load_raw(self, weight: torch.Tensor, bias: float) -> None:
        """Set the parameters so that the probe computes `weight · x + bias` on raw activations."""
        scaled = weight.to(self.scale) * self.scale
        self.linear.weight.copy_(scaled.unsqueeze(0))
        self.linear.bias.fill_(bias + float((weight.to(self.center) * self.center).sum()))
