"""The autograd face of the one-read evaluations (`fused_logistic` on a GPU, `blocked_logistic` on the
CPU): their forward pass computes the loss and its gradient in the same read of the rows, so backward
only scales the gradient it saved."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

LossAndGradient = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]


def one_read_loss_sum(
    evaluate: LossAndGradient, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """`evaluate(x, y, weight, bias)`'s loss (a float64 scalar), differentiable in `weight` and `bias`
    through the gradients `evaluate` returns beside it."""
    return _GradientFromForward.apply(evaluate, x, y, weight, bias)


class _GradientFromForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, evaluate: LossAndGradient, x, y, weight, bias) -> torch.Tensor:  # type: ignore[override]
        loss, grad_weight, grad_bias = evaluate(x, y, weight.detach(), bias.detach())
        ctx.save_for_backward(grad_weight.reshape(weight.shape), grad_bias.reshape(bias.shape))
        return loss

    @staticmethod
    @once_differentiable  # the saved gradient is a constant: a second derivative would be wrong, so it fails
    def backward(ctx, grad_loss: torch.Tensor):  # type: ignore[override]
        grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_loss.float()
        return None, None, None, grad_weight * scale, grad_bias * scale
