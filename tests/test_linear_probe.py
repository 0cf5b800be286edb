"""LinearProbe: a raw-space linear function whatever its internal coordinates and storage dtype."""

from __future__ import annotations

import pytest
import torch

from probe_lab.fit.linear_probe import LinearProbe


def _probe_with_coordinates(dim: int = 6) -> tuple[LinearProbe, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(300, dim) * torch.linspace(0.1, 20, dim) + 5.0
    probe = LinearProbe(dim)
    probe.set_coordinates(x.mean(0), x.std(0))
    with torch.no_grad():
        probe.linear.weight.normal_()
        probe.linear.bias.fill_(0.3)
    return probe, x


def test_forward_is_the_raw_linear_function() -> None:
    probe, x = _probe_with_coordinates()
    expected = x @ probe.raw_weight() + probe.raw_bias()
    torch.testing.assert_close(probe(x).detach(), expected, rtol=1e-5, atol=1e-4)


def test_load_raw_round_trips() -> None:
    probe, _ = _probe_with_coordinates()
    weight = torch.randn(6)
    probe.load_raw(weight, -1.5)
    torch.testing.assert_close(probe.raw_weight(), weight, rtol=1e-5, atol=1e-6)
    assert probe.raw_bias() == pytest.approx(-1.5, abs=1e-5)


def test_default_coordinates_are_plain_nn_linear() -> None:
    probe = LinearProbe(4)
    assert torch.equal(probe.linear.weight, torch.zeros(1, 4))
    x = torch.randn(10, 4)
    with torch.no_grad():
        probe.linear.weight.copy_(torch.arange(4.0).unsqueeze(0))
    torch.testing.assert_close(probe(x).detach(), probe.linear(x)[:, 0].detach())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage_keeps_float32_gradients(dtype: torch.dtype) -> None:
    """Gradients from half-precision activations match float32 ones at large N (no underflow)."""
    probe, _ = _probe_with_coordinates()
    x = (torch.randn(40000, 6) * 3).to(dtype)
    y = (torch.rand(40000) < 0.5).float()

    def grad_for(inputs: torch.Tensor) -> torch.Tensor:
        probe.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(probe(inputs), y).backward()
        return probe.linear.weight.grad.clone()

    reference = grad_for(x.float())  # the same half-precision values, up-cast
    torch.testing.assert_close(grad_for(x), reference, rtol=1e-4, atol=1e-7)


def test_mixed_precision_autocast_leaves_the_folded_bias_in_float32() -> None:
    """Under bf16 autocast, weight · center would round to bfloat16 and shift every logit."""
    probe, x = _probe_with_coordinates()
    expected_weight, expected_bias = probe.folded()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight, bias = probe.folded()
        logits = probe(x)
    assert weight.dtype == bias.dtype == logits.dtype == torch.float32
    torch.testing.assert_close(bias, expected_bias, rtol=0, atol=0)
    torch.testing.assert_close(weight, expected_weight, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_values_split_into_half_precision_terms(dtype: torch.dtype) -> None:
    """The GPU path multiplies half-precision activations by a sum of half-precision terms: together
    they carry the float32 values to about 2^-22 of the largest, whatever their magnitude, and zeros
    stay zeros."""
    from probe_lab.fit.linear_probe import _split_terms

    torch.manual_seed(0)
    for magnitude in (1e-9, 1.0, 1e6):
        values = torch.randn(1000, 3) * torch.logspace(-3, 0, 3) * magnitude
        terms, scale = _split_terms(values, dtype)
        assert all(term.dtype == dtype for term in terms) and torch.isfinite(scale)
        rebuilt = sum(term.float() for term in terms) / scale
        assert (rebuilt - values).abs().max() <= values.abs().max() * 2.0**-21
    terms, scale = _split_terms(torch.zeros(5, 1), dtype)
    assert torch.isfinite(scale) and not any(term.float().any() for term in terms)
