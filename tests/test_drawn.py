"""`data=drawn`: rows drawn block by block where they are read, the same however they are read, with
`data=synthetic`'s law; a process of a data-parallel fit draws only the blocks of its own shard."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from probe_lab.data.drawn import DRAW_BLOCK_ROWS, DrawnTable
from probe_lab.data.sources import open_source
from probe_lab.data.splits import split_dataset
from probe_lab.fit.distributed import Shard
from probe_lab.settings.data import DrawnData

ROWS = 3 * DRAW_BLOCK_ROWS + 123  # three whole blocks and a short last one


def test_rows_are_the_same_however_they_are_read() -> None:
    table = DrawnTable(ROWS, 12, seed=3, dtype=torch.float32)
    whole = table.read(np.arange(ROWS), None)
    rng = np.random.default_rng(0)
    scattered = np.sort(rng.choice(ROWS, 700, replace=False))
    shuffled = rng.permutation(ROWS)[:500]
    across = np.arange(DRAW_BLOCK_ROWS - 5, DRAW_BLOCK_ROWS + 5)  # two blocks' rows in one read
    for rows in (scattered, shuffled, across, np.arange(ROWS - 10, ROWS)):
        assert torch.equal(table.read(rows, None), whole[rows])
    # another process's table (a fresh one, or one sent to a worker) draws the same rows
    again = DrawnTable(ROWS, 12, seed=3, dtype=torch.float32)
    assert torch.equal(again.read(shuffled, None), whole[shuffled])
    assert np.array_equal(again.labels, table.labels)
    sent = pickle.loads(pickle.dumps(table))
    assert torch.equal(sent.read(across, None), whole[across])
    # another seed, other rows and labels
    other = DrawnTable(ROWS, 12, seed=4, dtype=torch.float32)
    assert not torch.equal(other.read(across, None), whole[across])
    assert not np.array_equal(other.labels, table.labels)


def test_only_the_blocks_of_the_rows_read_are_drawn_and_each_once_when_read_in_order() -> None:
    table = DrawnTable(ROWS, 8, seed=1)
    table.read(np.arange(DRAW_BLOCK_ROWS + 10, DRAW_BLOCK_ROWS + 20), None)
    assert table.blocks_drawn == 1
    table.read(np.array([5, 3 * DRAW_BLOCK_ROWS + 1]), None)  # blocks 0 and 3
    assert table.blocks_drawn == 3
    # small reads in storage order (as streaming and the host's block reads make them) reuse the block
    drawn = table.blocks_drawn
    for start in range(2 * DRAW_BLOCK_ROWS, 3 * DRAW_BLOCK_ROWS, 512):
        table.read(np.arange(start, start + 512), None)
    assert table.blocks_drawn == drawn + 1


def test_rows_follow_the_synthetic_law_with_labels_from_the_planted_direction() -> None:
    table = DrawnTable(ROWS, 16, seed=7, dtype=torch.float32, signal=3.0)
    x = table.read(np.arange(ROWS), None).double()
    mean, scales, direction = (v.double() for v in table._geometry)
    z = (x - mean) / scales
    # z ~ N(0, I): its moments, and no correlation left between features
    assert z.mean(0).abs().max() < 0.04 and (z.var(0) - 1).abs().max() < 0.06
    off_diagonal = torch.cov(z.T) - torch.diag(torch.diag(torch.cov(z.T)))
    assert off_diagonal.abs().max() < 0.04
    # labels follow σ(signal · z·d): a row's odds rise with its projection, as the logistic link says
    along = (z @ direction).numpy()
    y = table.labels
    assert 0.45 < y.mean() < 0.55
    slope = np.polyfit(along[np.abs(along) < 1], y[np.abs(along) < 1], 1)[0]
    assert 0.45 < slope < 0.85  # σ'(0)·3 = 0.75, flattened a little over |s| < 1


def test_a_process_draws_only_the_blocks_of_its_shard() -> None:
    data = DrawnData(n=8 * DRAW_BLOCK_ROWS, dim=8, validation_split=0.1, test_split=0.1)
    splits = split_dataset(open_source(data, seed=0).read(), data.validation_split, data.test_split, seed=0)
    table = splits.train.table
    total_blocks = data.n // DRAW_BLOCK_ROWS
    shard = Shard.of_process(len(splits.train), rank=1, processes=2)
    rows = splits.train.subset(np.asarray(shard.rows)).to_tensor()
    assert table.blocks_drawn <= total_blocks // 2 + 1
    fresh = open_source(data, seed=0).read()
    positions = splits.train._rows[np.asarray(shard.rows)]
    assert torch.equal(rows, fresh.read(positions))


def test_bad_drawn_settings_fail_with_one_line(cli) -> None:
    result = cli("data=drawn", "data.dtype=float64")
    assert result.returncode != 0
    assert "data.dtype must be one of float16, bfloat16, float32" in result.stderr


def _weights(run_dir: Path) -> np.ndarray:
    return load_file(str(run_dir / "probe.safetensors"))["weight"].ravel()


def test_processes_each_drawing_their_shard_fit_the_probe_of_one(cli, tmp_path) -> None:
    from tests.conftest import run_here

    data = ("backend=pytorch", "device=cpu", "data=drawn", "data.n=1501", "data.dim=24", "data.dtype=float32")
    one = run_here(*data, run_dir=tmp_path / "one")  # the reference fit, in this process
    many = cli(*data, "trainer.devices=2", "trainer.strategy=ddp")
    assert many.returncode == 0, many.stderr
    a, b = _weights(one.run_dir), _weights(many.run_dir)
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.99999
    assert many.metrics()["fit"]["evaluations"] == one.metrics()["fit"]["evaluations"]
    assert abs(many.metrics()["test"]["auroc"] - one.metrics()["test"]["auroc"]) <= 1e-4
    assert many.metrics()["fit"]["processes"] == 2
