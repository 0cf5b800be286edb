"""DeviceLBFGS takes torch.optim.LBFGS's steps, with its two-loop recursion kept on the device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probe_lab.lbfgs import DeviceLBFGS

SETTINGS = {"lr": 1.0, "max_iter": 200, "history_size": 5, "tolerance_grad": 1e-9, "tolerance_change": 1e-12}


def _minimize(optimizer_class: type[torch.optim.LBFGS]) -> tuple[torch.Tensor, dict]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 20, generator=generator, dtype=torch.float64) * torch.logspace(-1, 1, 20, dtype=torch.float64)
    y = (x @ torch.randn(20, generator=generator, dtype=torch.float64) > 0).double()
    weight = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_class([weight], line_search_fn="strong_wolfe", **SETTINGS)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weight, y) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), dict(optimizer.state[weight])


def test_the_same_iterates_as_torch_lbfgs() -> None:
    ours, our_state = _minimize(DeviceLBFGS)
    theirs, their_state = _minimize(torch.optim.LBFGS)
    assert (our_state["n_iter"], our_state["func_evals"]) == (their_state["n_iter"], their_state["func_evals"])
    assert our_state["n_iter"] > 10  # the history was used, and rolled over (history_size=5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-8)  # rounding differs, not the steps


def test_only_the_strong_wolfe_line_search_is_offered() -> None:
    with pytest.raises(ValueError, match="strong_wolfe"):
        DeviceLBFGS([torch.zeros(1, requires_grad=True)])
