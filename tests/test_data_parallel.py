"""Data-parallel full-batch L-BFGS (`trainer.devices=N trainer.strategy=ddp`) through the command line:
N CPU processes with gloo, started by Lightning's own launcher, give the probe of one process, write
the run folder once, and end together with one line when a process fails.

Shard sizes are uneven on purpose: 1,500 rows give 900 training rows (450 per process for 2, 300 for
3) and 300 validation rows, and 1,501 rows give 901 (451 + 450; 301 + 300 + 300).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import REPO

TESTS = REPO / "tests"
# A path of two values and both feature scalings: every fit of a choice runs on every process.
DATA = (
    "backend=pytorch",
    "device=cpu",
    "data.n=1501",
    "data.dim=48",
    "probe.regularization=[1.0,100.0]",
    "probe.standardize=auto",
)


def _weights(run_dir: Path) -> np.ndarray:
    return load_file(str(run_dir / "probe.safetensors"))["weight"].ravel()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same fit in one process: the reference, run here (`run_here`), not through the command line."""
    from tests.conftest import run_here

    return run_here(*DATA, run_dir=tmp_path_factory.mktemp("one") / "run")


@pytest.mark.parametrize(
    ("processes", "extra"),
    [
        (2, ()),
        # three shards of 301/300/300 rows, each streamed from its memory-mapped rows at every pass
        (3, ("device.memory_budget_gb=0.00001",)),
    ],
)
def test_processes_fit_the_probe_of_one_and_write_the_run_folder_once(cli, single, processes, extra) -> None:
    result = cli(*DATA, f"trainer.devices={processes}", "trainer.strategy=ddp", *extra)
    assert result.returncode == 0, result.stderr
    one, many = single.metrics(), result.metrics()
    assert many["fit"]["processes"] == processes and many["placement"]["processes"] == processes
    assert many["fit"]["collective_seconds"] > 0
    assert result.probe_json()["config"]["trainer"]["devices"] == processes
    # The same points evaluated; which of them ends an iteration (rather than a line-search trial) can
    # differ once the objective's float32 rounding differs with the shards, as it does for 3 shards here.
    assert many["fit"]["evaluations"] == one["fit"]["evaluations"]
    assert abs(many["fit"]["iterations"] - one["fit"]["iterations"]) <= (0 if processes == 2 else 1)
    assert _cosine(_weights(result.run_dir), _weights(single.run_dir)) >= 0.99999
    assert abs(many["test"]["auroc"] - one["test"]["auroc"]) <= 1e-4
    assert abs(many["val"]["auroc"] - one["val"]["auroc"]) <= 1e-4
    # the path under DDP: each value's validation AUROC as one process found it
    for a, b in zip(many["regularization_path"], one["regularization_path"], strict=True):
        assert a["regularization"] == b["regularization"] and abs(a["val_auroc"] - b["val_auroc"]) <= 1e-4
    if extra:
        assert many["placement"]["train"] == "streamed"
    # written once, by process 0: one summary, one log, nothing from the other processes
    assert result.stdout.count("probe_lab: pytorch backend") == 1
    assert f"{processes} processes" in result.stdout
    assert sorted(p.name for p in result.run_dir.glob("*.log")) == ["probe_lab.log"]
    assert not list(result.run_dir.glob(".staging*"))
    assert "Traceback" not in result.stderr


def test_a_process_that_fails_ends_every_process_with_its_line(cli, tmp_path) -> None:
    result = cli(
        *DATA,
        "trainer.devices=2",
        "+callbacks.fail._target_=failing_callback.FailOnProcess",
        "+callbacks.fail.rank=1",
        "device.collective_timeout_s=60",
        env={"PYTHONPATH": str(TESTS)},
    )
    assert result.returncode != 0
    assert "probe_lab: error: injected failure on process 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (result.run_dir / "probe.safetensors").exists()
    assert not (result.run_dir / "metrics.json").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("trainer.strategy=fsdp",), "trainer.strategy=fsdp is not supported"),
        (("trainer.devices=two",), "trainer.devices=two: give a number of processes"),
        (("trainer.devices=2", "probe.optimizer=adamw"), "probe.optimizer=adamw trains in one process"),
        (("trainer.devices=2", "experiment=parity"), "experiment=parity trains in one process"),
    ],
)
def test_data_parallel_settings_it_cannot_honour_are_refused_in_one_line(cli, flags, message) -> None:
    result = cli("backend=pytorch", "device=cpu", "data.n=400", "data.dim=8", *flags)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert not (result.run_dir / "metrics.json").exists()


def test_torchrun_starts_the_processes_and_only_the_first_writes(single, tmp_path) -> None:
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "probe_lab", "progress_bar=false", *DATA, "trainer.devices=2", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("probe_lab: pytorch backend") == 1
    assert _cosine(_weights(run_dir), _weights(single.run_dir)) >= 0.99999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the other process wrote nothing
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["probe_lab.log"]


def test_a_sweep_job_does_not_start_its_own_processes(tmp_path) -> None:
    from tests.conftest import run_module

    sweep = tmp_path / "sweep"
    flags = ("backend=pytorch", "device=cpu", "data.n=400", "trainer.devices=2", "progress_bar=false")
    result = run_module("probe_lab", "-m", *flags, f"hydra.sweep.dir={sweep}", run_dir=tmp_path / "run")
    assert result.returncode != 0
    assert "trainer.devices=2 in a sweep: a sweep job's processes are started by its launcher" in result.stdout
    assert (sweep / "0" / "error.txt").exists() and not (sweep / "0" / "metrics.json").exists()
