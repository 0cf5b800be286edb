"""The one placement decision: device, precision, budget and where the training split lives — and
every consumer following it (the run's loading, the store's scan, the DataModule, the optimizer)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from probe_lab.data.blocks import SplitBlocks
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.synthetic import activation_like
from probe_lab.fit.datamodule import ProbeDataModule
from probe_lab.settings import OptimizerName, ProbeTrainingConfig
from probe_lab.settings import placement as placement_module
from probe_lab.settings.backend import resolve_backend
from probe_lab.settings.data import StreamingSettings
from probe_lab.settings.ignored import ignored_settings
from probe_lab.settings.placement import DataHome, Placement, SplitBytes, decide_placement

GB = 10**9


def _cuda_present(monkeypatch: pytest.MonkeyPatch, total_memory: int = 80 * GB) -> None:
    """Decide as on a machine with one GPU of `total_memory` bytes (nothing runs on it)."""

    class Properties:
        pass

    properties = Properties()
    properties.total_memory = total_memory  # type: ignore[attr-defined]
    monkeypatch.setattr(placement_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(placement_module.torch.cuda, "get_device_properties", lambda index: properties)


@pytest.mark.parametrize(
    ("size_b", "backend"), [(7, "sklearn"), (33.9, "sklearn"), (34, "pytorch"), (70, "pytorch"), (405, "pytorch")]
)
def test_auto_backend_picks_by_model_size(size_b: float, backend: str) -> None:
    choice = resolve_backend("auto", size_b, 34.0)
    assert choice.name == backend and f"model.size_b={size_b:g}" in choice.reason
    assert resolve_backend("sklearn", 70, 34.0).name == "sklearn"
    assert "explicitly" in resolve_backend("pytorch", 7, 34.0).reason


def test_resident_on_the_cpu_when_the_training_split_fits() -> None:
    config = ProbeTrainingConfig(device="cpu", memory_budget_gb=1.0)
    placement = decide_placement(config, SplitBytes(train=GB // 2, val=GB, test=GB))
    assert placement.train_home is DataHome.resident and placement.optimizer is OptimizerName.lbfgs
    assert placement.device == torch.device("cpu") and placement.precision == "32"
    # on the CPU nothing is copied anywhere: validation and test are read where they are
    assert not placement.splits_on_device and not placement.scan_onto_device and not placement.val_beside_train


def test_streamed_lbfgs_when_the_training_split_exceeds_the_budget() -> None:
    config = ProbeTrainingConfig(device="cpu", memory_budget_gb=1.0)
    placement = decide_placement(config, SplitBytes(train=2 * GB, val=1))
    assert placement.train_home is DataHome.streamed and placement.optimizer is OptimizerName.lbfgs
    assert placement.full_batch and not placement.train_resident and not placement.val_beside_train
    assert placement.trainer_precision == "32"


def test_adamw_only_when_asked_for_and_then_streamed() -> None:
    for budget in (1e-9, 100.0):
        config = ProbeTrainingConfig(device="cpu", memory_budget_gb=budget, optimizer="adamw")
        placement = decide_placement(config, SplitBytes(train=GB, val=1))
        assert placement.optimizer is OptimizerName.adamw and placement.train_home is DataHome.streamed


def test_an_explicit_optimizer_decides_the_home_whatever_the_size() -> None:
    big, small = SplitBytes(train=10**15, val=1), SplitBytes(train=1, val=1)
    assert decide_placement(ProbeTrainingConfig(device="cpu", optimizer="lbfgs"), big).full_batch
    assert not decide_placement(ProbeTrainingConfig(device="cpu", optimizer="adamw"), small).full_batch


def test_gpu_resident_splits_and_store_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    _cuda_present(monkeypatch, total_memory=80 * GB)  # budget: half, 40 GB
    config = ProbeTrainingConfig(device="cuda")
    store = SplitBytes.of_rows(10_000_000, 2 * 1000, 0.2, 0.2, store=True)  # a 20 GB float16 store
    placement = decide_placement(config, store)
    assert placement.device == torch.device("cuda", 0) and placement.lightning_devices == [0]
    assert placement.full_batch and placement.splits_on_device and placement.val_beside_train
    assert placement.scan_onto_device  # twice the store fits 40 GB
    # full batch with 16-mixed: float16 data, a 32-bit Trainer (AMP's scaler cannot serve L-BFGS)
    assert placement.precision == "16-mixed" and placement.trainer_precision == "32"
    larger = SplitBytes.of_rows(12_000_000, 2 * 1000, 0.2, 0.2, store=True)  # 24 GB: splits fit, 2x does not
    placement = decide_placement(config, larger)
    assert placement.splits_on_device and not placement.scan_onto_device
    multi_layer = SplitBytes.of_rows(10_000_000, 2 * 1000, 0.2, 0.2, store=False)
    assert not decide_placement(config, multi_layer).scan_onto_device


def test_gpu_counts_the_validation_split_held_beside_training(monkeypatch: pytest.MonkeyPatch) -> None:
    _cuda_present(monkeypatch)
    config = ProbeTrainingConfig(device="cuda:1", memory_budget_gb=1.0)
    placement = decide_placement(config, SplitBytes(train=6 * GB // 10, val=6 * GB // 10))
    assert placement.train_home is DataHome.host and not placement.splits_on_device  # pinned, copied per pass
    assert placement.device == torch.device("cuda", 1) and placement.lightning_devices == [1]
    assert placement.trainer_precision == "32"  # full batch: float16 data, a 32-bit Trainer
    adamw = ProbeTrainingConfig(device="cuda:1", memory_budget_gb=1.0, optimizer="adamw")
    assert decide_placement(adamw, SplitBytes(GB, 1)).trainer_precision == "16-mixed"  # AdamW keeps AMP


def test_gpu_streams_from_storage_what_host_memory_cannot_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    _cuda_present(monkeypatch)
    monkeypatch.setattr(placement_module, "available_ram", lambda: 4 * GB)
    config = ProbeTrainingConfig(device="cuda", memory_budget_gb=1.0)
    assert decide_placement(config, SplitBytes(train=GB, val=1)).train_home is DataHome.host
    assert decide_placement(config, SplitBytes(train=3 * GB, val=1)).train_home is DataHome.streamed
    never = ProbeTrainingConfig(device="cuda", memory_budget_gb=1.0, host_budget_gb=0)
    assert decide_placement(never, SplitBytes(train=GB, val=1)).train_home is DataHome.streamed


def test_split_bytes_match_the_splits() -> None:
    from probe_lab.data.splits import split_dataset

    x, y = activation_like(1003, 8, seed=0)
    splits = split_dataset(ActivationDataset(x, y), 0.2, 0.15, seed=0)
    sizes = SplitBytes.of_rows(1003, 8 * 4, 0.2, 0.15)
    assert (sizes.train, sizes.val, sizes.test) == (splits.train.nbytes(), splits.val.nbytes(), splits.test.nbytes())


def test_cuda_without_gpu_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    placement_module.warn_once.cache_clear()  # the warning is logged once per process: not by an earlier test
    monkeypatch.setattr(placement_module.torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        placement = decide_placement(ProbeTrainingConfig(device="cuda"), SplitBytes(train=1, val=1))
    assert placement.device == torch.device("cpu")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    # the seed's use_mixed_precision means 16-mixed on CUDA only; bf16-mixed works on CPUs
    assert placement.precision == "32"
    assert decide_placement(ProbeTrainingConfig(device="cpu", precision="bf16-mixed"), SplitBytes(1, 1)).precision == (
        "bf16-mixed"
    )


def test_precision_follows_the_device(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    placement_module.warn_once.cache_clear()  # the warning is logged once per process: not by an earlier test
    _cuda_present(monkeypatch)
    sizes = SplitBytes(train=1, val=1)
    assert decide_placement(ProbeTrainingConfig(), sizes).precision == "16-mixed"
    assert decide_placement(ProbeTrainingConfig(use_mixed_precision=False), sizes).precision == "32"
    with caplog.at_level(logging.WARNING):
        assert decide_placement(ProbeTrainingConfig(device="cpu", precision="16-mixed"), sizes).precision == "32"
    assert "16-mixed needs CUDA" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on machines without CUDA")
def test_the_cuda_fallback_is_warned_once_per_process_over_many_fits(caplog) -> None:
    """The Python API decides a placement per fit: a script fitting many probes is told once."""
    from probe_lab.api import create_probe_trainer

    placement_module.warn_once.cache_clear()
    x, y = activation_like(200, 8, seed=6)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            trainer = create_probe_trainer(70, 8, ProbeTrainingConfig(device="cuda", max_iterations=5))
            trainer.fit(x, y)
            assert trainer.backend == "pytorch" and trainer.placement is not None
            assert trainer.placement.device == torch.device("cpu")
    warnings = [record for record in caplog.records if "no CUDA device is available" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_sklearn_is_placed_on_the_host_whatever_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    _cuda_present(monkeypatch)
    placement = decide_placement(ProbeTrainingConfig(device="cuda"), SplitBytes(1, 1), backend="sklearn")
    assert placement.device == torch.device("cpu") and placement.precision == "32" and not placement.splits_on_device


def _datamodule(placement: Placement) -> ProbeDataModule:
    x, y = activation_like(300, 8, seed=1)
    data = ActivationDataset(x, y)
    return ProbeDataModule(data.subset(np.arange(200)), data.subset(np.arange(200, 300)), placement, batch_size=64)


def test_datamodule_serves_a_resident_split_as_one_batch() -> None:
    placement = decide_placement(ProbeTrainingConfig(device="cpu"), SplitBytes(1, 1))
    module = _datamodule(placement)
    ((x, y),) = list(module.train_dataloader())
    assert y.shape == (200,)
    assert x.shape == (200, 8) and module.hold_whole().shape == (200, 8)
    assert sum(len(batch[1]) for batch in module.val_dataloader()) == 100


def test_datamodule_streams_a_streamed_split_in_minibatches() -> None:
    config = ProbeTrainingConfig(device="cpu", memory_budget_gb=1e-9, optimizer="adamw")
    module = _datamodule(decide_placement(config, SplitBytes(10**6, 1)))
    sizes = [len(y) for _, y in module.train_dataloader()]
    assert sum(sizes) == 200 and max(sizes) == 64
    with pytest.raises(ValueError, match="does not hold"):
        module.hold_whole()


def test_datamodule_serves_a_streamed_full_batch_split_as_its_blocks() -> None:
    placement = decide_placement(ProbeTrainingConfig(device="cpu", memory_budget_gb=1e-9), SplitBytes(10**6, 1))
    module = _datamodule(placement)
    (blocks,) = list(module.train_dataloader())
    assert isinstance(blocks, SplitBlocks) and blocks.rows == 200
    assert sum(len(y) for _, y in blocks) == 200


@pytest.mark.parametrize(("budget_gb", "optimizer"), [(None, "lbfgs"), (1e-6, "lbfgs"), (None, "adamw")])
def test_the_trainer_follows_the_placement(budget_gb: float | None, optimizer: str) -> None:
    """A fit without a given placement decides one from its datasets; the fit runs as it says."""
    from probe_lab.backends.pytorch import TorchProbeTrainer

    x, y = activation_like(600, 16, seed=2)
    data = ActivationDataset(x, y)
    config = ProbeTrainingConfig(
        device="cpu", memory_budget_gb=budget_gb, max_iterations=3, batch_size=128, optimizer=optimizer
    )
    trainer = TorchProbeTrainer(16, config)
    trainer.fit_datasets(data.subset(np.arange(400)), data.subset(np.arange(400, 600)))
    assert trainer.placement is not None and trainer.placement.optimizer.value == optimizer
    assert trainer.fit_details["optimizer"] == optimizer


# -- settings a fit does not use --------------------------------------------------------------------

SIZES = SplitBytes(train=1, val=1)


def _ignored(backend: str, *, full_batch: bool | None = None, **settings: object) -> str | None:
    """ignored_settings for a CPU fit of tiny splits with these settings (full_batch: the premise checked)."""
    config = ProbeTrainingConfig(device="cpu", **settings)
    placement = decide_placement(config, SIZES, backend=backend)
    assert full_batch is None or placement.full_batch is full_batch
    return ignored_settings(config, backend, placement)


@pytest.mark.parametrize("backend", ["sklearn", "pytorch"])
def test_a_default_config_ignores_nothing(backend: str) -> None:
    assert _ignored(backend) is None
    assert _ignored(backend, precision="32") is None  # what sklearn does anyway, and what pytorch runs on the CPU


def test_sklearn_names_pytorch_and_streaming_settings() -> None:
    line = _ignored("sklearn", streaming=StreamingSettings(num_workers=4), precision="bf16-mixed", learning_rate=0.01)
    assert line is not None and line.startswith("settings without effect, ignored: ") and "\n" not in line
    for name in ("data.num_workers=4", "precision=bf16-mixed", "probe.learning_rate=0.01", "sklearn backend"):
        assert name in line, line
    assert _ignored("sklearn", solver="saga") is None


def test_pytorch_names_sklearn_settings() -> None:
    line = _ignored("pytorch", solver="saga")
    assert line is not None and "probe.solver=saga (sklearn only)" in line, line


def test_full_batch_lbfgs_names_what_only_adamw_reads() -> None:
    line = _ignored("pytorch", full_batch=True, learning_rate=0.01, streaming=StreamingSettings(num_workers=4))
    assert line is not None, line
    assert "probe.learning_rate=0.01" in line and "data.num_workers=4" in line and "AdamW only" in line, line


def test_streamed_adamw_uses_learning_rate_and_streaming() -> None:
    settings = {"optimizer": "adamw", "learning_rate": 0.01, "streaming": StreamingSettings(num_workers=4)}
    assert _ignored("pytorch", full_batch=False, **settings) is None


def test_streamed_lbfgs_reads_with_the_streaming_threads_but_ignores_the_learning_rate() -> None:
    config = ProbeTrainingConfig(
        device="cpu", memory_budget_gb=1e-9, learning_rate=0.01, streaming=StreamingSettings(num_workers=4)
    )
    placement = decide_placement(config, SplitBytes(train=GB, val=1))
    assert placement.full_batch and placement.train_home is DataHome.streamed
    line = ignored_settings(config, "pytorch", placement)
    assert line is not None and "probe.learning_rate=0.01" in line and "num_workers" not in line, line


def test_a_gpu_keeps_what_its_budget_holds_of_a_split_beyond_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _cuda_present(monkeypatch)
    beyond = decide_placement(ProbeTrainingConfig(device="cuda", memory_budget_gb=1.0), SplitBytes(3 * GB, GB))
    assert beyond.train_home is DataHome.host and beyond.device_bytes == GB
    assert "1.00 GB of it kept on the device" in beyond.describe() and beyond.to_dict()["train_on_device_gb"] == 1.0
    resident = decide_placement(ProbeTrainingConfig(device="cuda", memory_budget_gb=10.0), SplitBytes(3 * GB, GB))
    assert resident.train_resident and resident.device_bytes == 0 and resident.to_dict()["train_on_device_gb"] == 3.0
    on_cpu = decide_placement(ProbeTrainingConfig(device="cpu", memory_budget_gb=1.0), SplitBytes(3 * GB, GB))
    assert on_cpu.train_home is DataHome.streamed and on_cpu.device_bytes == 0
