"""The size resolver and the device and precision fallbacks."""

from __future__ import annotations

import logging

import pytest

from probe_lab import resolver


@pytest.mark.parametrize(
    ("size_b", "backend"), [(7, "sklearn"), (33.9, "sklearn"), (34, "pytorch"), (70, "pytorch"), (405, "pytorch")]
)
def test_auto_picks_by_model_size(size_b: float, backend: str) -> None:
    choice = resolver.resolve_backend("auto", size_b, 34.0)
    assert choice.name == backend
    assert f"model.size_b={size_b:g}" in choice.reason


def test_forced_backend_wins_over_size() -> None:
    assert resolver.resolve_backend("sklearn", 70, 34.0).name == "sklearn"
    assert resolver.resolve_backend("pytorch", 7, 34.0).name == "pytorch"
    assert "explicitly" in resolver.resolve_backend("pytorch", 7, 34.0).reason


def test_cuda_without_gpu_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(resolver.torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert resolver.resolve_device("cuda") == "cpu"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert resolver.resolve_device("auto") == "cpu"


def test_auto_device_takes_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver.torch.cuda, "is_available", lambda: True)
    assert resolver.resolve_device("auto") == "cuda"
    assert resolver.resolve_device("cpu") == "cpu"


def test_precision_defaults_and_cpu_fallback() -> None:
    assert resolver.resolve_precision("auto", "cuda") == "16-mixed"
    assert resolver.resolve_precision("auto", "cpu") == "32"
    assert resolver.resolve_precision("16-mixed", "cpu") == "32"
    assert resolver.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
