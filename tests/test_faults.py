"""Faults: concurrent writers, killed conversions, a full disk, and runs that repeat bit for bit.

Every fault ends in one of two states: the new store or run folder is complete, or nothing of it is
published and what was there before is untouched.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_module
from test_store import convert, convert_here

from probe_lab.__main__ import RunFolder
from probe_lab.data.synthetic import activation_like
from probe_lab.errors import ProbeLabError
from probe_lab.locks import lock_file, writing
from probe_lab.store import MANIFEST, ActivationStore

pytestmark = pytest.mark.faults


def store_is_whole_or_absent(path: Path) -> bool:
    """True for a complete store (every checksum verified), False for no store; fails on anything else."""
    try:
        store = ActivationStore.open(path)
    except ProbeLabError as err:
        assert "manifest.json" in str(err) or "not found" in str(err) or "does not exist" in str(err), str(err)
        return False
    store.scan(verify=True)
    return True


@pytest.fixture
def big_source(tmp_path: Path) -> tuple[Path, Path]:
    """An .npy source of 40,000 × 64 float32 rows (10 MB) and its labels: a conversion of it into small
    shards takes long enough to be interrupted."""
    x, y = activation_like(40_000, 64, seed=1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "x.npy", tmp_path / "y.npy"


# -- one writer at a time -----------------------------------------------------------------------


def test_a_second_writer_of_a_locked_path_is_refused(tmp_path: Path) -> None:
    with (
        writing(tmp_path / "store", "store"),
        pytest.raises(ProbeLabError, match=r"store: another process is writing this store now"),
        writing(tmp_path / "store", "store"),
    ):
        pass
    with writing(tmp_path / "store", "store"):  # released: free again
        pass
    assert lock_file(tmp_path / "store").parent == tmp_path  # beside the store, not in it


def test_racing_conversions_into_one_store_leave_one_winner(tmp_path: Path, big_source: tuple[Path, Path]) -> None:
    x, y = big_source
    command = [sys.executable, "-m", "probe_lab.convert", str(x), str(tmp_path / "dst"), "--labels", str(y)]
    racers = [
        subprocess.Popen(
            [*command, "--shard-mb", "0.2", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outcomes = sorted((racer.wait(timeout=120), racer.stderr.read()) for racer in racers)
    (won, _), (lost, why) = outcomes
    assert (won, lost) == (0, 2), outcomes
    assert ("another process is writing this store" in why or "already exists" in why) and why.count("\n") == 1, why
    assert store_is_whole_or_absent(tmp_path / "dst")
    np.testing.assert_array_equal(ActivationStore.open(tmp_path / "dst").labels, np.load(y))


def test_a_run_folder_in_use_is_refused_and_left_alone(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"theirs": true}')
    with writing(run_dir, "run folder"):
        refused = run_module("probe_lab", "progress_bar=false", "data.n=300", "data.dim=8", run_dir=run_dir)
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .endswith("run: another process is writing this run folder now; wait for it to finish or choose another path")
    )
    assert json.loads((run_dir / "metrics.json").read_text()) == {"theirs": True}
    assert not (run_dir / "probe.safetensors").exists() and not (run_dir / "error.txt").exists()


def test_the_holder_of_a_run_folder_keeps_its_own_hydra_record(tmp_path: Path) -> None:
    record = tmp_path / "run" / ".hydra"
    record.mkdir(parents=True)
    (record / "overrides.yaml").write_text("- data.n=300\n")
    folder = RunFolder(tmp_path / "run", ".hydra")
    assert folder.claim()
    (record / "overrides.yaml").write_text("- data.n=999\n")  # a refused command's Hydra wrote its own
    assert not RunFolder(tmp_path / "run", ".hydra").claim()
    folder.release()
    assert (record / "overrides.yaml").read_text() == "- data.n=300\n"


# -- killed and full ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delay", [0.8, 2.5, *(pytest.param(delay, marks=pytest.mark.faults_extra) for delay in (0.3, 1.5, 4.0))]
)
def test_a_conversion_killed_anywhere_never_leaves_a_store_that_opens_incomplete(
    tmp_path: Path, big_source: tuple[Path, Path], delay: float
) -> None:
    x, y = big_source
    dst = tmp_path / "dst"
    command = [sys.executable, "-m", "probe_lab.convert", str(x), str(dst), "--labels", str(y), "--shard-mb", "0.05"]
    process = subprocess.Popen([*command, "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    complete = store_is_whole_or_absent(dst)
    again = convert(x, dst, "--labels", y, "--shard-mb", "0.05")
    if complete:
        assert again.returncode == 2 and "already exists" in again.stderr
    else:
        assert again.returncode == 0, again.stderr
    assert store_is_whole_or_absent(dst)
    np.testing.assert_array_equal(
        ActivationStore.open(dst).dataset().to_tensor().numpy(), np.load(x).astype(np.float16)
    )


def test_a_full_disk_while_a_store_is_replaced_leaves_the_old_store(
    tmp_path: Path, big_source: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = big_source
    dst = tmp_path / "dst"
    assert convert_here(capsys, x, dst, "--labels", y, "--dtype", "float32").returncode == 0
    before = {path.name: path.read_bytes() for path in dst.iterdir()}

    from probe_lab.store import writer

    real_open, written = open, [0]

    class FillingFile:
        """A file on a disk that fills up after 2 MB."""

        def __init__(self, file: object) -> None:
            self.file = file

        def write(self, data: object) -> int:
            written[0] += len(memoryview(data).cast("B"))
            if written[0] > 2 << 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(getattr(self.file, "name", "")))
            return self.file.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self.file, name)

        def __enter__(self) -> FillingFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

    monkeypatch.setattr(writer, "open", lambda *a, **k: FillingFile(real_open(*a, **k)), raising=False)
    failed = convert_here(capsys, x, dst, "--labels", y, "--overwrite", "--shard-mb", "0.5")
    assert failed.returncode == 2
    line = failed.stderr.strip()
    assert "\n" not in line and "No space left on device" in line and "shard-" in line, line
    assert {path.name: path.read_bytes() for path in dst.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dst.partial")] == []


# -- the same command, the same result ----------------------------------------------------------


TIMINGS = ("seconds", "started", "finished", "date", "time", "budget_gb")


def without_timings(value: object) -> object:
    """metrics.json less the wall-clock figures and the memory budget (a share of the memory free when
    the run started), which differ from run to run."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not any(t in k for t in TIMINGS)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.mark.parametrize("backend", ["sklearn", "pytorch"])
def test_the_same_command_twice_gives_the_same_probe_bit_for_bit(tmp_path: Path, backend: str) -> None:
    overrides = ("progress_bar=false", f"backend={backend}", "device=cpu", "data.n=1200", "data.dim=24", "seed=7")
    first = run_module("probe_lab", *overrides, run_dir=tmp_path / "first")
    second = run_module("probe_lab", *overrides, run_dir=tmp_path / "second")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert (first.run_dir / "probe.safetensors").read_bytes() == (second.run_dir / "probe.safetensors").read_bytes()
    assert without_timings(first.metrics()) == without_timings(second.metrics())
    assert (first.run_dir / MANIFEST).exists() is False  # a run folder, not a store


# -- an extraction killed as its store grows ----------------------------------------------------


def token_extraction(model: Path, texts: Path, output: Path):
    """The settings of the extraction the tests below kill: every token's rows at two layers, in 0.05 MB
    shards (the command line of `extraction_command`)."""
    from probe_lab.settings.extract import (
        ExtractConfig,
        ExtractDatasetSettings,
        ExtractModelSettings,
        ModelDtype,
        Pooling,
    )

    return ExtractConfig(
        model=ExtractModelSettings(path=str(model), device="cpu", dtype=ModelDtype.float32),
        dataset=ExtractDatasetSettings(path=str(texts)),
        layers=[1, -1],
        pooling=Pooling.tokens,
        output=str(output),
        shard_mb=0.05,
        batch_tokens=512,
        progress=False,
    )


def extraction_command(model: Path, texts: Path, output: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "probe_lab.extract",
        f"model.path={model}",
        f"dataset.path={texts}",
        "model.device=cpu",
        "model.dtype=float32",
        "layers=[1,-1]",
        "pooling=tokens",
        "shard_mb=0.05",
        "batch_tokens=512",
        "progress=false",
        f"output={output}",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def extraction_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny GPT-2-style model, 1500 labelled texts, and the store an uninterrupted extraction writes
    from them (about 2.4 MB)."""
    from tiny_models import save_model, write_texts

    from probe_lab.extract.run import extract

    root = tmp_path_factory.mktemp("extraction")
    model = save_model(root / "model", "gpt2")
    write_texts(root / "texts.csv", n=1500, seed=4)
    extract(token_extraction(model, root / "texts.csv", root / "whole"))
    return model, root / "texts.csv", root / "whole"


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.glob("*") if folder.is_dir() else []:
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # renamed into place meanwhile
            continue
    return total


@pytest.mark.parametrize(
    ("share", "signum"),
    [
        (0.5, signal.SIGKILL),
        pytest.param(0.5, signal.SIGTERM, marks=pytest.mark.faults_extra),  # one line; complete shards kept
        pytest.param(0.0, signal.SIGKILL, marks=pytest.mark.faults_extra),
        pytest.param(0.8, signal.SIGKILL, marks=pytest.mark.faults_extra),
    ],
)
def test_an_extraction_killed_as_its_store_grows_never_opens_incomplete_and_resumes_to_the_same_store(
    extraction_inputs: tuple[Path, Path, Path], tmp_path: Path, share: float, signum: signal.Signals
) -> None:
    from probe_lab.extract.run import extract

    model, texts, whole = extraction_inputs
    output = tmp_path / "store"
    command = extraction_command(model, texts, output, tmp_path / "run")
    target = int(share * folder_bytes(whole))
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while child.poll() is None and not (output.is_dir() and folder_bytes(output) >= target):
        assert time.monotonic() < deadline, "the extraction never started writing"
        time.sleep(0.002)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    if signum == signal.SIGKILL:
        assert child.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    else:
        assert child.returncode == 143, stderr
        assert stderr.strip().splitlines()[-1] == (
            "probe_lab.extract: stopped by SIGTERM; its complete shards are kept: run the same command again to resume"
        )

    with pytest.raises(ProbeLabError, match=r"unfinished extraction|manifest\.json|not found|does not exist"):
        ActivationStore.open(output)
    extract(token_extraction(model, texts, output))  # the same extraction again (in this process): it finishes
    assert sorted(path.name for path in output.iterdir()) == sorted(path.name for path in whole.iterdir())
    for file in whole.iterdir():
        assert (output / file.name).read_bytes() == file.read_bytes(), file.name


# -- a full disk under a run folder -------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MB tmpfs mounted for the test: a real file system that fills up (mounting needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not allowed here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` but for `leave` bytes."""
    stats = os.statvfs(disk)
    with open(disk / "filler", "wb") as file:
        file.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))


def test_a_full_disk_while_a_run_writes_its_files_leaves_the_earlier_run_untouched(
    small_disk: Path, npy_data: tuple[Path, Path]
) -> None:
    x, y = npy_data
    command = ("progress_bar=false", "backend=sklearn", "data=npy", f"data.x={x}", f"data.y={y}", "seed=1")
    run_dir = small_disk / "run"
    first = run_module("probe_lab", *command, run_dir=run_dir)
    assert first.returncode == 0, first.stderr
    published = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file() and path.suffix != ".log"}
    assert "probe.safetensors" in published and "roc.png" in published

    fill(small_disk, leave=48 << 10)  # room for Hydra's record and the log lines, not for the plots
    second = run_module("probe_lab", *command, "seed=2", run_dir=run_dir)
    assert second.returncode == 2, second.stderr
    line = second.stderr.strip()
    assert "\n" not in line, line
    assert line == (
        f"probe_lab: error: {run_dir}: no space left on device while the run wrote its files; nothing of it "
        "was published and the folder's earlier files are as they were"
    )
    for name, data in published.items():
        assert (run_dir / name).read_bytes() == data, name
    assert not list(run_dir.glob(".staging*"))
