"""The activation store: writing, reading, scanning, converting, streaming, and training from it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CliResult, run_here
from safetensors.torch import load_file
from test_bad_input import assert_hydra_rejected, assert_rejected
from torch.utils.data import DataLoader

from probe_lab.convert import main as convert_main
from probe_lab.data.streaming import StreamedBatches
from probe_lab.data.synthetic import activation_like
from probe_lab.errors import ProbeLabError
from probe_lab.fit.datamodule import ProbeDataModule
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.settings.placement import Placement, SplitBytes, decide_placement
from probe_lab.store import LABELS, MANIFEST, ActivationStore

Cli = Callable[..., CliResult]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def write_store(path: Path, x: torch.Tensor, y: np.ndarray, dtype: str = "float16", shard_mb: float = 0.01) -> Path:
    """A store of x (N, D) or (N, L, D), appended in uneven batches so batches straddle shards."""
    layers = x.shape[1] if x.ndim == 3 else None
    with ActivationStore.create(path, x.shape[-1], layers, dtype, shard_mb=shard_mb) as writer:
        for start in range(0, len(x), 77):
            writer.append(x[start : start + 77], y[start : start + 77])
    return path


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, torch.Tensor, np.ndarray]:
    x, y = activation_like(600, 32, seed=3)
    return write_store(tmp_path / "store", torch.from_numpy(x), y), torch.from_numpy(x), y


def convert(*args: object) -> subprocess.CompletedProcess:
    """`python -m probe_lab.convert args...` in a subprocess."""
    command = [sys.executable, "-m", "probe_lab.convert", *map(str, args), "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def convert_here(capsys: pytest.CaptureFixture[str], *args: object) -> subprocess.CompletedProcess:
    """The same command line through `probe_lab.convert.main` in this process (no interpreter start-up)."""
    returncode = convert_main([*map(str, args), "--no-progress"])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, returncode, out.out, out.err)


# -- round trip -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layers", [None, 3])
def test_round_trip_is_exact_in_the_stored_dtype(tmp_path: Path, dtype: str, layers: int | None) -> None:
    shape = (500, 24) if layers is None else (500, layers, 24)
    x = torch.randn(shape) * 10
    y = np.arange(500) % 2
    write_store(tmp_path / "s", x, y, dtype)
    store = ActivationStore.open(tmp_path / "s")
    assert len(store.manifest.shards) > 1
    assert (store.rows, store.dim, store.layers, store.dtype) == (500, 24, layers, DTYPES[dtype])
    expected = x.to(DTYPES[dtype])
    for layer in [None] if layers is None else range(layers):
        dataset = store.dataset(layer)
        read = dataset.to_tensor()
        assert read.dtype == DTYPES[dtype]
        assert torch.equal(read, expected if layer is None else expected[:, layer])
        picked = np.array([499, 3, 250, 3])
        assert torch.equal(dataset.read(picked), (expected if layer is None else expected[:, layer])[picked])
    np.testing.assert_array_equal(store.labels, y)
    # Shards are plain safetensors files.
    first = load_file(tmp_path / "s" / store.manifest.shards[0].file)["activations"]
    assert torch.equal(first, expected[: len(first)])


def test_whole_shards_written_side_by_side_equal_shards_written_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = torch.randn(530, 2, 16).to(torch.bfloat16), np.arange(530) % 2
    with ActivationStore.create(tmp_path / "in_turn", 16, 2, "bfloat16", shard_mb=0.005) as writer:
        for start, stop in ((0, 7), (7, 300), (300, 530)):
            writer.append(x[start:stop], y[start:stop])
            writer.end_shard()
    with ActivationStore.create(tmp_path / "side_by_side", 16, 2, "bfloat16", shard_mb=0.005) as writer:
        writer.append(x[:7], y[:7])  # an open shard: append_shards ends it first
        writer.append_shards(x[7:300], y[7:300])
        writer.append_shards(x[300:], y[300:])
    names = sorted(p.name for p in (tmp_path / "in_turn").iterdir())
    assert len(names) > 8 and names == sorted(p.name for p in (tmp_path / "side_by_side").iterdir())
    for name in names:
        assert (tmp_path / "in_turn" / name).read_bytes() == (tmp_path / "side_by_side" / name).read_bytes(), name
    assert torch.equal(ActivationStore.open(tmp_path / "side_by_side").dataset(1).to_tensor(), x[:, 1])

    # One shard that cannot be written: the call keeps none of its shards, and says why.
    from probe_lab.store import writer as store_writer

    real_open, calls = open, []

    def failing_open(path: object, *args: object, **kwargs: object) -> object:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        return real_open(path, *args, **kwargs)

    with ActivationStore.create(tmp_path / "full", 16, 2, "bfloat16", shard_mb=0.005) as writer:
        writer.append_shards(x[:7], y[:7])
        monkeypatch.setattr(store_writer, "open", failing_open, raising=False)
        with pytest.raises(OSError, match="No space left"):
            writer.append_shards(x[7:300], y[7:300])
        monkeypatch.undo()
        assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["shard-00000.safetensors"]
        assert writer.rows == 7 and len(writer.shards) == 1
        writer.append_shards(x[7:], y[7:])
    assert torch.equal(ActivationStore.open(tmp_path / "full").dataset(0).to_tensor(), x[:, 0])


def test_shards_appended_not_yet_durable_are_flushed_when_asked_and_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from probe_lab.store import writer as store_writer

    flushed: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1])
        real_fsync(fd)

    monkeypatch.setattr(store_writer.os, "fsync", recording_fsync)
    x, y = torch.randn(300, 16), np.arange(300) % 2
    with ActivationStore.create(tmp_path / "s", 16, shard_mb=0.002) as writer:  # 65 rows a shard
        first = writer.append_shards(x[:150], y[:150], durable=False)
        assert len(first) > 1 and not flushed  # written, not yet flushed
        writer.make_durable(first)
        assert flushed == [shard.file for shard in first]
        second = writer.append_shards(x[150:], y[150:], durable=False)
        assert writer.shards == first + second
    assert {shard.file for shard in second} <= set(flushed[len(first) :])  # close flushed the rest
    assert torch.equal(ActivationStore.open(tmp_path / "s").dataset().to_tensor(), x.half())


def test_reads_keep_the_order_and_repeats_asked_for(tmp_path: Path) -> None:
    x = (
        torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2 * 3, 1, 4).expand(6, 3, 4)
        * torch.tensor([1.0, 10, 100])[:, None]
    )
    dataset = ActivationStore.open(write_store(tmp_path / "s", x.contiguous(), np.arange(6) % 2, "float32")).dataset(2)
    for rows in ([0, 1, 1, 3], [5, 0, 5], [2, 3, 4]):
        assert torch.equal(dataset.read(np.array(rows)), x[rows, 2])
    train = dataset.subset(np.array([4, 1, 3]))
    assert torch.equal(train.to_tensor(), x[[4, 1, 3], 2])


def test_an_interrupted_write_is_not_a_complete_store(tmp_path: Path) -> None:
    x = torch.randn(300, 8)
    crashed = ActivationStore.create(tmp_path / "crashed", 8, shard_mb=0.001)
    crashed.append(x, np.arange(300) % 2)  # ...and the process dies before close()
    assert list((tmp_path / "crashed").glob("shard-*.safetensors"))
    with pytest.raises(ProbeLabError, match=r"no manifest\.json.*interrupted"):
        ActivationStore.open(tmp_path / "crashed")
    # An exception inside the writer's block removes what it wrote.
    with (
        pytest.raises(RuntimeError, match="extraction failed"),
        ActivationStore.create(tmp_path / "failed", 8, shard_mb=0.001) as writer,
    ):
        writer.append(x, np.arange(300) % 2)
        raise RuntimeError("extraction failed")
    assert list((tmp_path / "failed").iterdir()) == []


def test_creating_over_a_store_needs_overwrite_and_never_deletes_foreign_files(tmp_path: Path) -> None:
    write_store(tmp_path / "s", torch.randn(50, 4), np.arange(50) % 2)
    with pytest.raises(ProbeLabError, match="already exists"):
        ActivationStore.create(tmp_path / "s", 4)
    write_store_again = ActivationStore.create(tmp_path / "s", 4, overwrite=True)
    assert not (tmp_path / "s" / MANIFEST).exists()  # the old store no longer reads as complete
    write_store_again.append(torch.ones(2, 4), [0, 1])
    assert write_store_again.close().rows == 2
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("keep me")
    with pytest.raises(ProbeLabError, match=r"thesis\.tex"):
        ActivationStore.create(tmp_path / "notes", 4, overwrite=True)
    assert (tmp_path / "notes" / "thesis.tex").exists()


def test_the_manifest_is_published_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = ActivationStore.create(tmp_path / "s", 4)
    writer.append(torch.ones(2, 4), [0, 1])

    def no_rename(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert not list((tmp_path / "s").glob(f"*{MANIFEST}*"))  # no manifest, and no half-written one
    # A close killed while writing the manifest leaves its partial file: overwriting takes it too.
    monkeypatch.undo()
    write_store(tmp_path / "again", torch.randn(10, 4), np.arange(10) % 2)
    (tmp_path / "again" / f".{MANIFEST}.partial-0badf00d").write_text("{")
    with ActivationStore.create(tmp_path / "again", 4, overwrite=True) as rewrite:
        rewrite.append(torch.ones(2, 4), [0, 1])
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [LABELS, MANIFEST, "shard-00000.safetensors"]


def test_appending_rows_of_the_wrong_shape_or_labels_is_refused(tmp_path: Path) -> None:
    writer = ActivationStore.create(tmp_path / "s", 8)
    with pytest.raises(ProbeLabError, match=r"shape \(4,\).*\(8,\)"):
        writer.append(torch.zeros(3, 4), [0, 1, 0])
    with pytest.raises(ProbeLabError, match="3 activation rows but 2 labels"):
        writer.append(torch.zeros(3, 8), [0, 1])
    with pytest.raises(ProbeLabError, match="binary"):
        writer.append(torch.zeros(3, 8), [0, 1, 2])


# -- opening a damaged store --------------------------------------------------------------------------


def _edit_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_bad_stores_are_refused_naming_the_file(store) -> None:
    path, _, _ = store
    shard = path / "shard-00001.safetensors"
    manifest = (path / MANIFEST).read_text()

    def refused(pattern: str) -> None:
        with pytest.raises(ProbeLabError, match=pattern):
            ActivationStore.open(path).dataset()
        (path / MANIFEST).write_text(manifest)

    (path / MANIFEST).write_text("{not json")
    refused(f"{path / MANIFEST}: not a readable manifest")
    _edit_manifest(path, dim="wide")
    refused("malformed manifest")
    _edit_manifest(path, rows=601)
    refused("shards hold 600 rows")
    _edit_manifest(path, dtype="float32")
    refused(f"{shard.parent / 'shard-00000.safetensors'}: holds F16 values but manifest.json says float32")
    _edit_manifest(path, dim=31)
    refused(r"shard-00000.safetensors: holds shape \(\d+, 32\) but manifest.json says \(\d+, 31\)")
    labels = path / "labels.npy"
    original_labels = labels.read_bytes()
    np.save(labels, 1 - np.load(labels))
    refused(f"{labels}: checksum mismatch")
    np.save(labels, np.zeros(599, dtype=np.int8))
    _edit_manifest(path, labels_sha256=hashlib.sha256(labels.read_bytes()).hexdigest())
    refused(f"{labels}: 599 labels but the store has 600 rows")
    labels.write_bytes(original_labels)

    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    refused(f"{shard}: checksum mismatch")
    shard.write_bytes(bytes(data[:-10]))
    refused(rf"{shard}: truncated \(\d+ bytes, \d+ expected\)")
    shard.unlink()
    refused(f"{shard}: shard listed in manifest.json is missing")
    (path / MANIFEST).unlink()
    refused("no manifest.json")


def test_checksums_can_be_skipped_but_not_non_finite_rows(store) -> None:
    path, _, _ = store
    shard = path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-2:] = torch.tensor([float("nan")], dtype=torch.float16).view(torch.uint8).numpy().tobytes()
    shard.write_bytes(bytes(data))
    with pytest.raises(ProbeLabError, match="checksum mismatch"):
        ActivationStore.open(path).dataset()
    dataset = ActivationStore.open(path).dataset(verify=False)
    with pytest.raises(ProbeLabError, match="1 of 600 rows contain NaN or Inf"):
        dataset.check_finite()
    kept, dropped = dataset.drop_nonfinite()
    assert (dropped, len(kept)) == (1, 599)
    kept.check_finite()


# -- the command line -----------------------------------------------------------------------------


def test_training_on_a_store_matches_training_on_the_same_npy(tmp_path: Path, npy_data, capsys) -> None:
    """The conversion and both trainings run in this process: what is compared is what they compute."""
    x_path, y_path = npy_data
    done = convert_here(capsys, x_path, tmp_path / "store", "--labels", y_path, "--dtype", "float32")
    assert done.returncode == 0, done.stderr
    assert "600 rows × 32 dims, float32" in done.stdout
    from_npy = run_here(f"data.x={x_path}", f"data.y={y_path}", "data=npy", "backend=pytorch", run_dir=tmp_path / "a")
    from_store = run_here("data=store", f"data.path={tmp_path / 'store'}", "backend=pytorch", run_dir=tmp_path / "b")
    npy_metrics, store_metrics = from_npy.metrics(), from_store.metrics()
    assert store_metrics["data"] == "store"
    assert store_metrics["val"] == npy_metrics["val"]
    assert store_metrics["test"] == npy_metrics["test"]


def test_a_multi_layer_store_trains_on_the_chosen_layer_streaming_when_over_budget(cli: Cli, tmp_path: Path) -> None:
    x, y = activation_like(800, 16, seed=4)
    layered = torch.from_numpy(np.stack([np.random.default_rng(0).normal(size=x.shape), x], axis=1))
    write_store(tmp_path / "s", layered.float(), y, "bfloat16")
    common = ("data=store", f"data.path={tmp_path / 's'}", "backend=pytorch")
    # the training, in this process (what it reads and computes); the refusal below, on the command line
    signal = run_here(
        *common, "data.layer=1", "device.memory_budget_gb=1e-6", "probe.max_iterations=30", run_dir=tmp_path / "run"
    )
    assert signal.metrics()["fit"]["optimizer"] == "lbfgs" and signal.metrics()["placement"]["train"] == "streamed"
    assert signal.metrics()["fit"]["activation_dtype"] == "bfloat16"
    assert signal.metrics()["test"]["auroc"] > 0.7  # layer 0 is noise: about 0.5
    out_of_range = cli(*common, "data.layer=2")
    assert_rejected(out_of_range, "data.layer=2 is out of range for 2 layers")


def test_bad_stores_on_the_command_line(cli: Cli, store) -> None:
    path, _, _ = store
    missing = cli("data=store", f"data.path={path / 'nowhere'}")
    assert_rejected(missing, path / "nowhere", "not found")
    shard = path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-2:] = torch.tensor([float("inf")], dtype=torch.float16).view(torch.uint8).numpy().tobytes()
    shard.write_bytes(bytes(data))
    assert_rejected(cli("data=store", f"data.path={path}"), shard, "checksum mismatch")
    dropped = cli("data=store", f"data.path={path}", "data.verify=false", "data.drop_nonfinite=true")
    assert dropped.returncode == 0, dropped.stderr
    assert dropped.metrics()["dropped_nonfinite_rows"] == 1
    assert dropped.metrics()["n_train"] + dropped.metrics()["n_val"] + dropped.metrics()["n_test"] == 599
    assert "1 rows with NaN/Inf dropped" in dropped.stdout


def test_convert_a_per_sample_directory_and_refuse_to_overwrite(tmp_path: Path, pt_dir, capsys) -> None:
    directory, labels, x, y = pt_dir
    done = convert_here(capsys, directory, tmp_path / "store", "--labels", labels, "--dtype", "bfloat16")
    assert done.returncode == 0, done.stderr
    assert "200 rows × 16 dims, bfloat16" in done.stdout
    store = ActivationStore.open(tmp_path / "store")
    assert torch.equal(store.dataset().to_tensor(), torch.from_numpy(x).to(torch.bfloat16))
    np.testing.assert_array_equal(store.labels, y)

    again = convert_here(capsys, directory, tmp_path / "store", "--labels", labels)
    assert again.returncode == 2 and "already exists (pass --overwrite" in again.stderr
    assert ActivationStore.open(tmp_path / "store").dtype == torch.bfloat16
    replaced = convert_here(capsys, directory, tmp_path / "store", "--labels", labels, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert ActivationStore.open(tmp_path / "store").dtype == torch.float16
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["activations", "labels.txt", "store"])


def test_convert_refuses_bad_input_and_leaves_nothing(tmp_path: Path, npy_data, capsys) -> None:
    x_path, y_path = npy_data
    short = tmp_path / "short.npy"
    np.save(short, np.zeros(599, dtype=np.int64))
    huge = tmp_path / "huge.npy"
    np.save(huge, np.full((600, 4), 1e6, dtype=np.float32))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    cases = [
        ((x_path, tmp_path / "out", "--labels", short), f"{short}: 599 labels but {x_path} holds 600 rows"),
        ((tmp_path / "nope.npy", tmp_path / "out", "--labels", y_path), "nope.npy: not found"),
        ((huge, tmp_path / "out", "--labels", y_path), "overflow float16; use --dtype bfloat16 or float32"),
        ((x_path, tmp_path / "notes", "--labels", y_path, "--overwrite"), "not an activation store"),
    ]
    for args, message in cases:
        done = convert_here(capsys, *args)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("probe_lab.convert: error: "), done.stderr
        assert message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.npy", "y.npy", "short.npy", "huge.npy", "notes"])
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


# -- streaming --------------------------------------------------------------------------------------


def _epoch(stream: StreamedBatches, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_streaming_reads_every_training_row_once_per_epoch_in_a_seeded_order(store) -> None:
    path, x, y = store
    train = ActivationStore.open(path).dataset().subset(np.arange(0, 600, 3))
    stream = StreamedBatches(train, 32, dtype=torch.float16, shuffle=True, seed=7, read_rows=40, buffer_reads=2)
    first, first_y = _epoch(stream)
    second, _ = _epoch(stream)
    expected = x[::3].half()
    for epoch in (first, second):
        assert epoch.dtype == torch.float16
        assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, expected.tolist()))
    assert not torch.equal(first, second)
    assert not torch.equal(first, expected)
    # The labels travel with their rows.
    rows = {tuple(r): label for r, label in zip(expected.tolist(), y[::3], strict=True)}
    assert all(rows[tuple(r)] == label for r, label in zip(first.tolist(), first_y.tolist(), strict=True))
    again = StreamedBatches(train, 32, dtype=torch.float16, shuffle=True, seed=7, read_rows=40, buffer_reads=2)
    assert torch.equal(_epoch(again)[0], first)
    # Worker processes split the reads between them: still every row exactly once.
    parallel = StreamedBatches(train, 32, dtype=torch.float16, shuffle=True, seed=7, read_rows=40, buffer_reads=2)
    split, _ = _epoch(parallel, workers=2)
    assert sorted(map(tuple, split.tolist())) == sorted(map(tuple, expected.tolist()))
    # Reader threads (the training default) too, in an order fixed by the seed.
    threaded = [
        StreamedBatches(train, 32, dtype=torch.float16, shuffle=True, seed=7, read_rows=40, buffer_reads=2, threads=3)
        for _ in range(2)
    ]
    first_run, second_run = (_epoch(stream)[0] for stream in threaded)
    assert sorted(map(tuple, first_run.tolist())) == sorted(map(tuple, expected.tolist()))
    assert torch.equal(first_run, second_run)


def _placement(optimizer: str) -> Placement:
    return decide_placement(ProbeTrainingConfig(device="cpu", optimizer=optimizer), SplitBytes(1, 1))


def test_training_holds_the_split_in_its_stored_precision(tmp_path: Path) -> None:
    x, y = activation_like(300, 8, seed=1)
    for dtype in DTYPES:
        dataset = ActivationStore.open(write_store(tmp_path / dtype, torch.from_numpy(x), y, dtype)).dataset()
        resident = ProbeDataModule(dataset, dataset, _placement("lbfgs"), batch_size=64)
        batch_x, batch_y = next(iter(resident.train_dataloader()))
        assert batch_x.dtype == DTYPES[dtype] and batch_x.shape == (300, 8)
        assert torch.equal(batch_y, torch.from_numpy(y).float())
        streamed = ProbeDataModule(dataset, dataset, _placement("adamw"), batch_size=64)
        assert {batch[0].dtype for batch in streamed.train_dataloader()} == {DTYPES[dtype]}


def test_settings_of_other_sources_are_refused(cli: Cli, store) -> None:
    path, _, _ = store
    result = cli("data=store", f"data.path={path}", "data.x=oops.npy")
    assert_hydra_rejected(result, "data.x", "StoreData")
