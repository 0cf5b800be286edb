"""`data.layer=all`: one probe per layer in one run, with the layer table, plot and each layer's probe."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_composition import composed, refusal
from test_store import write_store

from probe_lab.data.tables import MappedFile
from probe_lab.errors import ProbeLabError
from probe_lab.run import run
from probe_lab.settings import placement
from probe_lab.store import ActivationStore
from probe_lab.store import scan as scan_module


def layered_npy(folder: Path) -> tuple[Path, Path]:
    """600 rows × 4 layers × 16 dims; only layer 2 holds the label."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    x = rng.standard_normal((600, 4, 16)).astype(np.float32)
    x[:, 2, :3] += 1.5 * y[:, None]
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return folder / "x.npy", folder / "y.npy"


def test_every_layer_gets_its_probe_and_the_table_finds_the_informative_one(cli, tmp_path) -> None:
    x, y = layered_npy(tmp_path)
    result = cli("data=npy", f"data.x={x}", f"data.y={y}", "data.layer=all", "backend=sklearn")
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader((result.run_dir / "layers.csv").read_text().splitlines()))
    assert [int(row["layer"]) for row in table] == [0, 1, 2, 3]
    record = json.loads((result.run_dir / "layers.json").read_text())
    assert record["best_layer"] == 2 and float(table[2]["test_auroc"]) > 0.95
    assert all(float(row["test_auroc"]) < 0.7 for i, row in enumerate(table) if i != 2)
    assert (result.run_dir / "layers.png").stat().st_size > 0
    for layer in range(4):
        folder = result.run_dir / f"layer_{layer:02d}"
        assert json.loads((folder / "probe.json").read_text())["layer"] == layer
        assert (folder / "probe.safetensors").is_file()
    splits = {
        json.dumps([m["n_train"], m["n_val"], m["n_test"]])
        for m in (json.loads((result.run_dir / f"layer_{k:02d}" / "metrics.json").read_text()) for k in range(4))
    }
    assert len(splits) == 1  # one split of the rows for every layer
    assert "← best (validation)" in result.stdout and "layers.csv, layers.json, layers.png" in result.stdout


def test_data_layer_all_without_a_layer_axis_and_a_bad_layer_are_refused(cli, tmp_path) -> None:
    np.save(tmp_path / "flat.npy", np.zeros((100, 4), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.tile([0, 1], 50))
    data = ("data=npy", f"data.x={tmp_path / 'flat.npy'}", f"data.y={tmp_path / 'y.npy'}")
    assert "data.layer=all: data=npy holds no layer axis" in refusal(cli(*data, "data.layer=all"))
    assert refusal(cli(*data, "data.layer=top")) == "data.layer must be a layer index or all, got 'top'"


def layered_store(folder: Path) -> Path:
    """The rows of `layered_npy` as a bfloat16 store of several shards."""
    x, y = layered_npy(folder)
    return write_store(folder / "store", torch.from_numpy(np.load(x)), np.load(y), "bfloat16", shard_mb=0.02)


def every_layer(folder: Path, store: Path, *overrides: str) -> tuple[dict, list[int]]:
    """A data.layer=all run on `store`, in this process: its layers.json and the shards each scan read."""
    scanned: list[int] = []
    original = scan_module.scan_shard

    def counting_scan(shard: MappedFile, *args: object) -> np.ndarray:
        scanned.append(int(shard.path.stem.split("-")[-1]))
        return original(shard, *args)

    cfg = composed("config", "data=store", f"data.path={store}", "data.layer=all", "backend=sklearn", *overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scan_module, "scan_shard", counting_scan)
        run(cfg, folder)
    return json.loads((folder / "layers.json").read_text()), scanned


def test_data_layer_all_reads_a_store_once_for_every_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = layered_store(tmp_path)
    shards = len(ActivationStore.open(store).manifest.shards)
    assert shards > 1
    per_layer, scanned_per_layer = every_layer(tmp_path / "per_layer", store, "device.host_budget_gb=0")
    assert per_layer["read"].startswith("each layer read on its own")
    # the budget decided the reading: no layer's sklearn fit calls it a setting without effect
    assert "host_budget_gb" not in caplog.text
    assert len(scanned_per_layer) == 4 * shards  # what one pass saves: a scan per layer

    def no_mapped_reads(self: MappedFile) -> None:
        raise AssertionError(f"{self.path} read again after the scan")

    monkeypatch.setattr(MappedFile, "array", no_mapped_reads)
    held, scanned = every_layer(tmp_path / "held", store)
    assert held["read"].startswith("one pass over every layer")
    assert sorted(scanned) == list(range(shards))  # each shard read once, by the one scan
    assert held["layers"] == [row | {"probe": row["probe"].replace("per_layer", "held")} for row in per_layer["layers"]]
    assert held["best_layer"] == 2


def test_every_layer_is_held_when_it_fits_the_host_budget_shared_by_a_nodes_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(placement, "available_ram", lambda: 4_000_000_000)  # default budget: half of it
    assert placement.holds_every_layer(1_500_000_000, None)
    assert not placement.holds_every_layer(1_500_000_000, None, share=2)  # each process holds its own copy
    assert placement.holds_every_layer(1_500_000_000, 1.5, share=2)  # a budget set is each process's
    assert not placement.holds_every_layer(1, 0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.test_split=0", "data.test_split must be > 0"),
        ("model.hidden_dim=32", "model.hidden_dim=32 .* has 16 dims"),
    ],
)
def test_data_layer_all_refuses_a_bad_setting_before_it_reads_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: str, message: str
) -> None:
    store = layered_store(tmp_path)

    def no_scan(shard: MappedFile, *args: object) -> None:
        raise AssertionError(f"{shard.path} read before the refusal")

    monkeypatch.setattr(scan_module, "scan_shard", no_scan)
    cfg = composed("config", "data=store", f"data.path={store}", "data.layer=all", "backend=sklearn", override)
    with pytest.raises(ProbeLabError, match=message):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
