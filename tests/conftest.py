"""Shared fixtures: running the command line in a subprocess, and small activation files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from probe_lab.data.synthetic import activation_like

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path

    def metrics(self) -> dict:
        return json.loads((self.run_dir / "metrics.json").read_text())

    def probe_json(self) -> dict:
        return json.loads((self.run_dir / "probe.json").read_text())


def run_module(
    module: str,
    *overrides: str,
    run_dir: Path,
    cwd: Path | None = None,
    timeout: int = 300,
    env: dict[str, str] | None = None,
) -> CliResult:
    """`python -m MODULE overrides... hydra.run.dir=run_dir` in a subprocess (with `env` added)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    command = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd or run_dir.parent, env=env, timeout=timeout)
    return CliResult(done.returncode, done.stdout, done.stderr, run_dir)


def run_here(*overrides: str, run_dir: Path) -> CliResult:
    """The training run of `python -m probe_lab progress_bar=false overrides...`, in this process: the
    config composed from the same overrides by Hydra's compose API and run by `probe_lab.run.run`
    into run_dir (no interpreter start-up; no Hydra job around it, so no .hydra/ and no log file).
    For tests whose point is what the run computes and records, not the command line itself; an error
    is raised, not turned into an exit status."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from hydra import compose, initialize_config_module

    from probe_lab.run import run
    from probe_lab.settings.schema import register_configs

    register_configs()
    with initialize_config_module("probe_lab.conf", version_base=None):
        cfg = compose("config", overrides=["progress_bar=false", *overrides])
    run_dir.mkdir(parents=True, exist_ok=True)
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        run(cfg, run_dir)
    return CliResult(0, out.getvalue(), err.getvalue(), run_dir)


@pytest.fixture
def cli(tmp_path: Path):
    """cli(*overrides) runs `python -m probe_lab` with its run folder under tmp_path."""
    counter = iter(range(1000))

    def _run(*overrides: str, module: str = "probe_lab", env: dict[str, str] | None = None) -> CliResult:
        quiet = ("progress_bar=false",) if module == "probe_lab" else ()
        return run_module(module, *quiet, *overrides, run_dir=tmp_path / f"run{next(counter)}", env=env)

    return _run


@pytest.fixture(scope="module")
def cli_once(tmp_path_factory: pytest.TempPathFactory):
    """cli_once(*overrides) runs `python -m probe_lab progress_bar=false overrides...` once per test module
    (and test process) for each set of overrides, in a run folder of its own, for the tests of the
    module that check different things about the same run. They must leave its folder as it is."""
    done: dict[tuple[str, ...], CliResult] = {}

    def _run(*overrides: str) -> CliResult:
        if overrides not in done:
            run_dir = tmp_path_factory.mktemp("cli_once") / "run"
            done[overrides] = run_module("probe_lab", "progress_bar=false", *overrides, run_dir=run_dir)
        return done[overrides]

    return _run


@pytest.fixture
def npy_data(tmp_path: Path) -> tuple[Path, Path]:
    """(x.npy (600, 32) activation-like float32, y.npy 0/1 labels)."""
    return write_npy_data(tmp_path)


def write_npy_data(folder: Path) -> tuple[Path, Path]:
    """The npy_data fixture's files, written into `folder` (for fixtures of a wider scope)."""
    x, y = activation_like(600, 32, seed=3)
    x_path, y_path = folder / "x.npy", folder / "y.npy"
    np.save(x_path, x)
    np.save(y_path, y)
    return x_path, y_path


@pytest.fixture
def pt_dir(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """(directory of sample_<i>.pt tensors (D=16), labels.txt, X, y) in the seed guide's layout."""
    x, y = activation_like(200, 16, seed=5)
    directory = tmp_path / "activations"
    directory.mkdir()
    for i, row in enumerate(x):
        torch.save(torch.from_numpy(row.copy()), directory / f"sample_{i}.pt")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{int(v)}\n" for v in y))
    return directory, labels, x, y


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all-faults",
        action="store_true",
        help="also run the fault tests' further kill points and stop points (marked faults_extra); "
        "without it the fault tests are a bounded set, one case per promise",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--all-faults"):
        return
    further = pytest.mark.skip(reason="a further fault case: run with --all-faults")
    for item in items:
        if "faults_extra" in item.keywords:
            item.add_marker(further)
