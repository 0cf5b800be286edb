"""Full-batch L-BFGS wherever the training split lives: resident on the device, or streamed block by
block from where it is stored at every evaluation. Every home evaluates the same objective, so the
fit lands on the same probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fitting import cosine, fit_on_cpu

from probe_lab.backends.pytorch import TorchProbeTrainer
from probe_lab.data.blocks import SplitBlocks
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import Splits, split_dataset
from probe_lab.data.synthetic import activation_like
from probe_lab.fit.evaluation import Evaluation, StreamedEvaluation
from probe_lab.fit.module import prepared_module
from probe_lab.settings import OptimizerName, ProbeTrainingConfig
from probe_lab.settings.placement import DataHome
from probe_lab.store import ActivationStore

TINY_BUDGET_GB = 1e-6  # nothing fits: the training split streams


@pytest.fixture(scope="module")
def splits() -> Splits:
    x, y = activation_like(3000, 48, seed=11)
    return split_dataset(ActivationDataset(x, y), 0.2, 0.2, seed=0)


@pytest.fixture(scope="module")
def store_splits(tmp_path_factory: pytest.TempPathFactory) -> Splits:
    """A float16 store of several shards, so that blocks never cross a shard."""
    x, y = activation_like(3000, 48, seed=12)
    path = tmp_path_factory.mktemp("tiers") / "store"
    with ActivationStore.create(path, dim=48, dtype="float16", shard_mb=0.05) as writer:
        for start in range(0, len(x), 700):
            writer.append(x[start : start + 700], y[start : start + 700])
    store = ActivationStore.open(path)
    assert len(store.manifest.shards) > 3
    return split_dataset(store.dataset(), 0.2, 0.2, seed=0)


@pytest.mark.parametrize("device_bytes", [0, 10**5])  # everything read per pass, or the first blocks kept
def test_a_streamed_evaluation_equals_the_resident_one(splits: Splits, device_bytes: int) -> None:
    config = ProbeTrainingConfig(device="cpu", regularization=[1.0, 100.0])
    module = prepared_module(splits.train, [1.0, 100.0], config, OptimizerName.lbfgs)
    with torch.no_grad():  # away from the starting point, where every gradient entry matters
        module.probe.linear.weight.normal_(0, 0.1)
    x = splits.train.to_device(torch.device("cpu"))
    y = torch.from_numpy(np.asarray(splits.train.labels, dtype=np.float32))
    resident = Evaluation(module, lambda: module.loss(x, y), torch.device("cpu"))
    loss = resident()
    grads = [p.grad.clone() for p in module.parameters() if p.requires_grad]
    blocks = SplitBlocks(splits.train, torch.device("cpu"), read_rows=97, threads=3, device_bytes=device_bytes)
    assert len(blocks.segments) > 10 and (len(blocks.on_device) > 0) == (device_bytes > 0)
    streamed = StreamedEvaluation(module, module.loss_sum, module.penalty, blocks, len(splits.train))
    assert float(streamed()) == pytest.approx(float(loss), rel=1e-12)
    for param, grad in zip((p for p in module.parameters() if p.requires_grad), grads, strict=True):
        # float32 block sums in another order: equal to float32 rounding of the largest entry
        torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max()))


@pytest.mark.parametrize("kept_blocks", [0, 5])
def test_blocks_come_in_storage_order_every_pass(store_splits: Splits, kept_blocks: int) -> None:
    row_bytes = store_splits.train.dim * 2
    blocks = SplitBlocks(
        store_splits.train,
        torch.device("cpu"),
        read_rows=64,
        threads=3,
        prefetch=1,
        device_bytes=sum(len(s) for s in store_splits.train.segments(64)[:kept_blocks]) * row_bytes,
    )
    assert len(blocks.on_device) == kept_blocks
    first = torch.cat([x for x, _ in blocks])
    second = torch.cat([x for x, _ in blocks])
    assert torch.equal(first, second)
    expected = store_splits.train.read(np.concatenate(blocks.segments))
    assert torch.equal(first, expected)
    labels = torch.cat([y for _, y in blocks]).numpy()
    np.testing.assert_array_equal(labels, np.asarray(store_splits.train.labels)[np.concatenate(blocks.segments)])


@pytest.mark.parametrize("hold_on_host", [False, True])
def test_rows_are_taken_from_where_the_blocks_hold_them(
    store_splits: Splits, hold_on_host: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = store_splits.train
    blocks = SplitBlocks(
        train, torch.device("cpu"), read_rows=64, device_bytes=3 * 64 * train.dim * 2, hold_on_host=hold_on_host
    )
    positions = np.array([len(train) - 1, 0, 5, 200, 5, 130, 999])
    expected = train.read(positions)
    if hold_on_host:  # every row is in memory: storage is not read again
        monkeypatch.setattr(train, "read", lambda rows: pytest.fail("read from storage"))
    assert torch.equal(blocks.rows_at(positions), expected)


def test_a_reader_error_ends_the_pass_with_it(splits: Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = SplitBlocks(splits.train, torch.device("cpu"), read_rows=100, threads=2)

    def broken(rows: np.ndarray, out: torch.Tensor) -> None:
        raise OSError("shard-00003.safetensors: read failed")

    monkeypatch.setattr(splits.train, "read_into", broken)
    with pytest.raises(OSError, match="read failed"):
        list(blocks)


@pytest.mark.parametrize("data", ["splits", "store_splits"])
def test_streamed_lbfgs_lands_on_the_resident_probe(data: str, request: pytest.FixtureRequest) -> None:
    chosen: Splits = request.getfixturevalue(data)
    path = [0.1, 10.0, 100.0]
    resident = fit_on_cpu(TorchProbeTrainer, chosen, regularization=path)
    streamed = fit_on_cpu(TorchProbeTrainer, chosen, regularization=path, memory_budget_gb=TINY_BUDGET_GB)
    assert resident.placement.train_home is DataHome.resident
    assert streamed.placement.train_home is DataHome.streamed
    assert streamed.placement.optimizer is OptimizerName.lbfgs  # not AdamW, whatever the size
    assert streamed.fit_details["converged"] and streamed.fit_details["optimizer"] == "lbfgs"
    assert streamed.fit_details["iterations"] == resident.fit_details["iterations"]
    assert streamed.regularization == resident.regularization
    assert cosine(streamed.coef_, resident.coef_) > 0.9999
    assert abs(streamed.val_auroc - resident.val_auroc) < 1e-4
    for ours, theirs in zip(streamed.regularization_path, resident.regularization_path, strict=True):
        assert abs(ours["val_auroc"] - theirs["val_auroc"]) < 1e-4


@pytest.mark.parametrize("budget_gb", [None, TINY_BUDGET_GB])
def test_the_validation_pass_scores_the_split_once(
    store_splits: Splits, budget_gb: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from probe_lab.backends import base

    def read_again(*args: object) -> None:
        pytest.fail("the validation split was read again to score it")

    monkeypatch.setattr(base, "device_decision_functions", read_again)
    budget = {} if budget_gb is None else {"memory_budget_gb": budget_gb}
    trainer = fit_on_cpu(TorchProbeTrainer, store_splits, regularization=[1.0, 100.0], **budget)
    assert trainer.placement.full_batch
    # In the split's own row order, though a split read in blocks is validated in storage order.
    expected = trainer.decision_function(store_splits.val)
    np.testing.assert_allclose(trainer.val_scores, expected, rtol=1e-5, atol=1e-5)


def test_adamw_is_only_chosen_when_asked_for(splits: Splits) -> None:
    trainer = TorchProbeTrainer(48, ProbeTrainingConfig(device="cpu", optimizer="adamw", max_iterations=2))
    trainer.fit_datasets(splits.train, splits.val)
    assert trainer.placement.optimizer is OptimizerName.adamw and trainer.fit_details["optimizer"] == "adamw"


def test_the_cli_streams_a_store_over_budget_with_lbfgs(cli, tmp_path: Path) -> None:
    x, y = activation_like(1200, 32, seed=4)
    with ActivationStore.create(tmp_path / "store", dim=32, dtype="float16", shard_mb=0.02) as writer:
        writer.append(x, y)
    common = ("backend=pytorch", "device=cpu", "data=store", f"data.path={tmp_path / 'store'}")  # GPU tiers: test_gpu
    resident = cli(*common)
    streamed = cli(*common, f"device.memory_budget_gb={TINY_BUDGET_GB}", "device.host_budget_gb=0")
    assert resident.returncode == 0 and streamed.returncode == 0, streamed.stderr
    ours, theirs = streamed.metrics(), resident.metrics()
    assert (ours["placement"]["train"], ours["placement"]["optimizer"]) == ("streamed", "lbfgs")
    assert theirs["placement"]["train"] == "resident"
    assert abs(ours["test"]["auroc"] - theirs["test"]["auroc"]) < 1e-4
    log = (streamed.run_dir / "probe_lab.log").read_text()
    assert "lbfgs; training split" in log and "streamed, splits held on the host" in log
    assert "  place    lbfgs, training split" in streamed.stdout and "read from storage at each pass" in streamed.stdout
    assert "held on the device" in resident.stdout
    assert ours["placement"]["train_gb"] == theirs["placement"]["train_gb"] > 0
