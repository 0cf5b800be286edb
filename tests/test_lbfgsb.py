"""scipy's L-BFGS-B as a torch optimizer (`probe_lab.backends.lbfgsb.ScipyLBFGSB`)."""

from __future__ import annotations

import pytest
import torch

from probe_lab.fit.lbfgsb import ScipyLBFGSB


def quadratic(weight: torch.Tensor, bias: torch.Tensor, scales: torch.Tensor, target: torch.Tensor):
    """A closure for ½ Σ scales·(w − target)² + ½ (b − 1)², as torch.optim.LBFGS's closures are written."""

    def closure() -> torch.Tensor:
        weight.grad = bias.grad = None
        loss = 0.5 * (scales * (weight - target) ** 2).sum() + 0.5 * (bias - 1.0).pow(2).sum()
        loss.backward()
        return loss

    return closure


def test_minimizes_every_parameter_in_place_and_counts_its_work() -> None:
    f64 = torch.float64  # the optimizer works in the parameters' dtype
    scales, target = torch.logspace(0, 1, 50, dtype=f64), torch.linspace(-3, 3, 50, dtype=f64)
    weight, bias = torch.zeros(50, dtype=f64, requires_grad=True), torch.zeros(1, dtype=f64, requires_grad=True)
    optimizer = ScipyLBFGSB([weight, bias], max_iter=200, tolerance_grad=1e-9, tolerance_change=0.0)
    value = optimizer.step(quadratic(weight, bias, scales, target))
    torch.testing.assert_close(weight.detach(), target, atol=1e-6, rtol=0)
    torch.testing.assert_close(bias.detach(), torch.ones(1, dtype=f64), atol=1e-6, rtol=0)
    assert value.dtype == torch.float64 and float(value) < 1e-10
    result = optimizer.result
    assert optimizer.converged and result.status == 0
    state = optimizer.state[weight]
    assert state["n_iter"] == result.nit > 0 and state["func_evals"] == result.nfev >= result.nit


def test_a_spent_budget_is_not_convergence() -> None:
    scales, target = torch.logspace(-2, 2, 50), torch.linspace(-3, 3, 50)
    weight, bias = torch.zeros(50, requires_grad=True), torch.zeros(1, requires_grad=True)
    optimizer = ScipyLBFGSB([weight, bias], max_iter=2)
    optimizer.step(quadratic(weight, bias, scales, target))
    assert not optimizer.converged and optimizer.result.nit == 2
    assert (weight.detach() - target).abs().max() > 1e-3  # stopped where the budget ran out


def test_any_evaluated_point_meeting_the_gradient_tolerance_ends_the_run() -> None:
    """A line-search trial whose gradient meets the tolerance ends the run even when its objective
    reads higher than the start — as rounding makes it near a float32 optimum — where scipy alone
    would reject the trial and search on."""
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)

    def closure() -> torch.Tensor:  # ½ (w − 1)², read 0.6 too high at the minimizer
        w.grad = None
        loss = 0.5 * (w - 1.0).pow(2).sum()
        loss.backward()
        return loss + 0.6 if abs(float(w.detach()) - 1.0) < 1e-12 else loss

    optimizer = ScipyLBFGSB([w], tolerance_grad=1e-5)
    optimizer.step(closure)
    result = optimizer.result
    assert optimizer.converged and result.nfev == 2 and result.nit == 1  # the start, then the first trial: w = 1
    assert float(w.detach()) == 1.0


def test_one_parameter_group_only() -> None:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="one parameter group"):
        ScipyLBFGSB([{"params": [a]}, {"params": [b]}])


def test_the_probe_objective_is_summed_in_float64() -> None:
    """Near the optimum L-BFGS compares objectives that differ by about 1e-9; a float32 sum of many
    rows would round them to about 3e-8."""
    import torch.nn.functional as F

    from probe_lab.fit.linear_probe import LinearProbe
    from probe_lab.fit.objective import ProbeObjective

    torch.manual_seed(0)
    probe = LinearProbe(4)
    with torch.no_grad():
        probe.linear.weight.normal_()
    n = 200_000
    objective = ProbeObjective([1.0], n, 4)
    x, y = torch.randn(n, 4), torch.randint(0, 2, (n,))
    loss = objective(probe, x, y)
    with torch.no_grad():
        rows = F.binary_cross_entropy_with_logits(probe(x), y.float(), reduction="none")
        penalty = float((objective.penalty_coef * probe.linear.weight.double() ** 2).sum())
    assert loss.dtype == torch.float64
    assert abs(float(loss.detach()) - (float(rows.double().mean()) + penalty)) < 1e-12
    assert abs(float(rows.mean()) - float(rows.double().mean())) > 1e-11  # a float32 sum would differ


def test_an_objective_that_is_not_finite_is_not_convergence() -> None:
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)

    def closure() -> torch.Tensor:
        w.grad = None
        loss = (w - 1.0).pow(2).sum()
        loss.backward()
        return loss * float("nan")

    optimizer = ScipyLBFGSB([w])
    optimizer.step(closure)
    assert not optimizer.converged


def test_a_parameter_the_objective_ignores_gets_a_zero_gradient_and_half_precision_is_refused() -> None:
    used, unused = torch.zeros(2, requires_grad=True), torch.full((3,), 5.0, requires_grad=True)

    def closure() -> torch.Tensor:
        used.grad = unused.grad = None
        loss = (used - 2.0).pow(2).sum()
        loss.backward()
        return loss

    optimizer = ScipyLBFGSB([used, unused])
    optimizer.step(closure)
    assert optimizer.converged
    torch.testing.assert_close(used.detach(), torch.full((2,), 2.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(unused.detach(), torch.full((3,), 5.0), atol=0, rtol=0)
    with pytest.raises(ValueError, match="float32 or float64"):
        ScipyLBFGSB([torch.zeros(2, dtype=torch.float16, requires_grad=True)])
