"""The pieces of a data-parallel fit that need no second process: shards, the combination of their
feature statistics, the processes the Trainer flags ask for, and the placement of one process."""

from __future__ import annotations

import pytest
import torch

from probe_lab.data.stats import combine_moments, device_moments
from probe_lab.errors import ProbeLabError
from probe_lab.fit.distributed import Shard
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.settings.parallel import Processes, follower_process, launched_processes
from probe_lab.settings.placement import DataHome, SplitBytes, decide_placement

GB = 10**9


@pytest.mark.parametrize(("rows", "processes"), [(10, 3), (9, 3), (901, 2), (5, 5)])
def test_shards_cover_every_row_once_in_order_and_differ_by_at_most_one(rows, processes) -> None:
    shards = [Shard.of_process(rows, rank, processes) for rank in range(processes)]
    covered = [row for shard in shards for row in shard.rows]
    assert covered == list(range(rows))
    sizes = [len(shard.rows) for shard in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert all(shard.of == rows for shard in shards)


def test_shard_statistics_combine_into_the_whole_splits() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1001, 7, generator=generator, dtype=torch.float64) * 3 + 100  # a large mean
    parts = [x[shard.rows.start : shard.rows.stop] for shard in (Shard.of_process(1001, r, 3) for r in range(3))]
    moments = [device_moments(part) for part in parts]
    counts = torch.tensor([len(part) for part in parts])
    mean, std = combine_moments(counts, torch.stack([m for m, _ in moments]), torch.stack([s for _, s in moments]))
    torch.testing.assert_close(mean, x.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(std, x.std(0, correction=0), rtol=1e-10, atol=0)


def test_trainer_flags_ask_for_processes() -> None:
    assert Processes.from_trainer_flags({}).count == 1
    assert Processes.from_trainer_flags({"devices": 2, "strategy": "ddp"}).count == 2
    four = Processes.from_trainer_flags({"devices": "2", "num_nodes": 2})
    assert (four.devices, four.nodes, four.count, four.data_parallel) == (2, 2, 4, True)
    with pytest.raises(ProbeLabError, match=r"trainer\.strategy=deepspeed is not supported"):
        Processes.from_trainer_flags({"strategy": "deepspeed"})
    with pytest.raises(ProbeLabError, match=r"trainer\.devices=0"):
        Processes.from_trainer_flags({"devices": 0})
    with pytest.raises(ProbeLabError, match=r"trainer\.num_nodes=auto"):
        Processes.from_trainer_flags({"num_nodes": "auto"})


def test_a_process_places_its_own_shard() -> None:
    config = ProbeTrainingConfig(device="cpu", memory_budget_gb=1.0)
    two = Processes(devices=2)
    # 1.5 GB of training rows do not fit one process's 1 GB, but each process's 0.75 GB shard does
    assert decide_placement(config, SplitBytes(train=3 * GB // 2, val=1)).train_home is DataHome.streamed
    placement = decide_placement(config, SplitBytes(train=3 * GB // 2, val=1), processes=two)
    assert placement.train_home is DataHome.resident and placement.train_bytes == 3 * GB // 4
    assert placement.lightning_devices == 2 and placement.to_dict()["processes"] == 2
    assert not placement.splits_on_device and "2 processes" in placement.describe()
    with pytest.raises(ProbeLabError, match=r"probe\.optimizer=adamw trains in one process"):
        decide_placement(ProbeTrainingConfig(device="cpu", optimizer="adamw"), SplitBytes(1, 1), processes=two)


def test_the_launchers_environment_says_which_process_this_is(monkeypatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert not follower_process() and launched_processes() == 1
    monkeypatch.setenv("SLURM_PROCID", "1")  # one task of a step of one: not a data-parallel process
    assert not follower_process()
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert follower_process() and launched_processes() == 2
    monkeypatch.delenv("SLURM_PROCID")
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a process Lightning's launcher started
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert follower_process() and launched_processes() == 2
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not follower_process()
