"""The CPU's one-read evaluation: the blocked loss and gradient equal a float64 reference and the
two-product evaluation, for one probe and a path, rows of any float dtype, any block size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probe_lab.fit import blocked_logistic
from probe_lab.fit.linear_probe import LinearProbe
from probe_lab.fit.objective import ProbeObjective


def reference(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """(loss, ∂/∂w, ∂/∂b) in float64."""
    w = weight.detach().double().reshape(-1, x.shape[1]).requires_grad_()
    b = bias.detach().double().reshape(-1).requires_grad_()
    logits = x.double() @ w.T + b
    loss = F.binary_cross_entropy_with_logits(logits, y.double()[:, None].expand_as(logits), reduction="sum")
    return (loss.detach(), *torch.autograd.grad(loss, (w, b)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("columns", [1, 4])
@pytest.mark.parametrize("block_rows", [None, 7, 1000])
def test_the_blocked_evaluation_is_the_float64_one(dtype, columns, block_rows) -> None:
    generator = torch.Generator().manual_seed(columns)
    x = (torch.randn(3001, 40, generator=generator) * 3 + 2).to(dtype)
    y = (torch.rand(3001, generator=generator) > 0.3).float()
    weight = torch.randn(columns, 40, generator=generator) * 0.05
    bias = torch.randn(columns, generator=generator)
    loss, grad_weight, grad_bias = blocked_logistic.loss_and_gradient(x, y, weight, bias, block_rows=block_rows)
    expected_loss, expected_weight, expected_bias = reference(x, y, weight, bias)
    assert loss.dtype == torch.float64
    assert abs(float(loss - expected_loss)) <= 1e-7 * float(expected_loss)
    torch.testing.assert_close(
        grad_weight.double(), expected_weight, rtol=0, atol=1e-5 * float(expected_weight.abs().max())
    )
    torch.testing.assert_close(grad_bias.double(), expected_bias, rtol=0, atol=1e-5 * float(expected_bias.abs().max()))


@pytest.mark.parametrize("columns", [1, 3])
def test_the_objective_on_the_cpu_reads_once_and_agrees_with_two_products(columns) -> None:
    """ProbeObjective's loss and its gradient in the probe's parameters, blocked and two-product alike."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2000, 24, generator=generator) * 5 + 1
    y = (torch.rand(2000, generator=generator) > 0.5).float()
    probe = LinearProbe(24, outputs=columns)
    objective = ProbeObjective([1.0, 10.0, 100.0][:columns], len(x), 24)
    objective.precondition(probe, x.double().mean(0), x.double().std(0), standardize=False)
    with torch.no_grad():
        probe.linear.weight.copy_(torch.randn(columns, 24, generator=generator) * 0.3)
    assert blocked_logistic.applies(x)
    blocked = objective.loss_sum(probe, x, y)
    blocked_grads = torch.autograd.grad(blocked, list(probe.parameters()))
    two = objective.two_product_loss_sum(probe, x, y)
    two_grads = torch.autograd.grad(two, list(probe.parameters()))
    assert abs(float((blocked - two).detach())) <= 1e-6 * float(two.detach())
    for ours, theirs in zip(blocked_grads, two_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))
