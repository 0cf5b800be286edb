"""`python -m probe_lab -m ...` (Hydra multirun) end to end, and the pieces of its summary."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from omegaconf import OmegaConf

from probe_lab.errors import ProbeLabError
from probe_lab.sweep import JobRow, error_line, plot_against, read_job

SMALL = ("progress_bar=false", "data.n=400", "data.dim=16")


@dataclass
class SweepResult:
    returncode: int
    stdout: str
    stderr: str
    sweep_dir: Path

    def rows(self) -> list[dict[str, str]]:
        with (self.sweep_dir / "summary.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))

    def metrics(self, job: str) -> dict:
        return json.loads((self.sweep_dir / job / "metrics.json").read_text())


def run_sweep(tmp_path: Path, *overrides: str) -> SweepResult:
    """`python -m probe_lab -m SMALL overrides... hydra.sweep.dir=tmp_path/sweep` in a subprocess."""
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, "-m", "probe_lab", "-m", *SMALL, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    return SweepResult(done.returncode, done.stdout, done.stderr, sweep_dir)


def test_sweep_summarizes_every_job(tmp_path: Path) -> None:
    result = run_sweep(tmp_path, "probe.regularization=0.1,10")
    assert result.returncode == 0, result.stderr
    for name in ("summary.csv", "summary.md", "sweep.png"):
        assert (result.sweep_dir / name).is_file()
    assert (result.sweep_dir / "sweep.png").stat().st_size > 1000
    rows = result.rows()
    assert [row["job"] for row in rows] == ["0", "1"]
    for row, regularization in zip(rows, ("0.1", "10"), strict=True):
        metrics = result.metrics(row["job"])
        assert f"probe.regularization={regularization}" in row["overrides"].split()
        assert (row["status"], row["backend"], row["error"]) == ("completed", metrics["backend"], "")
        assert float(row["val_auroc"]) == metrics["val"]["auroc"]
        assert float(row["test_auroc"]) == metrics["test"]["auroc"]
        assert float(row["fit_seconds"]) == metrics["fit_seconds"]
    best = max(rows, key=lambda row: float(row["val_auroc"]))
    assert rows[0]["val_auroc"] != rows[1]["val_auroc"]  # else "the best" would not be tested
    assert re.search(r"^  best +job (\S+) ", result.stdout, re.MULTILINE).group(1) == best["job"]
    assert f"{result.sweep_dir}: summary.csv, summary.md, sweep.png" in result.stdout
    markdown = (result.sweep_dir / "summary.md").read_text()
    assert "| 0 | `probe.regularization=0.1` | sklearn |" in markdown
    assert "| 1 | `probe.regularization=10` | sklearn |" in markdown


def test_failed_job_is_listed_and_the_sweep_exits_non_zero(tmp_path: Path) -> None:
    result = run_sweep(tmp_path, "data.validation_split=0.2,0.99")
    assert result.returncode == 1
    message = "data.validation_split=0.99 and data.test_split=0.2 leave no training data"
    assert f"probe_lab: error: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    ok, failed = result.rows()
    assert ok["status"] == "completed" and float(ok["val_auroc"]) == result.metrics("0")["val"]["auroc"]
    assert (failed["job"], failed["status"], failed["error"]) == ("1", "failed", message)
    assert failed["val_auroc"] == failed["test_auroc"] == failed["backend"] == ""
    assert (result.sweep_dir / "1" / "error.txt").read_text().splitlines()[0] == message
    assert f"  failed   job 1 (data.validation_split=0.99): {message}" in result.stdout
    assert re.search(r"^  best +job 0 ", result.stdout, re.MULTILINE)
    assert f"failed: {message}" in (result.sweep_dir / "summary.md").read_text()


def test_plot_has_a_val_and_a_test_line_per_backend_on_a_log_axis() -> None:
    rows = [
        JobRow(str(i), [f"probe.regularization={c}", f"backend={b}"], "completed", b, 0.9, 0.8, 0.1)
        for i, (c, b) in enumerate([(c, b) for c in ("0.01", "1", "100") for b in ("sklearn", "pytorch")])
    ]
    fig, ax = plt.subplots()
    plot_against(ax, "probe.regularization", rows, {"pytorch": "C0", "sklearn": "C1"})
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["pytorch val", "pytorch test", "sklearn val", "sklearn test"]
    assert all(list(line.get_xdata()) == [0.01, 1.0, 100.0] for line in ax.get_lines())
    assert ax.get_xscale() == "log"
    plt.close(fig)


def test_outcome_files_older_than_the_job_are_ignored(tmp_path: Path) -> None:
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps({"backend": "sklearn", "val": {}, "test": {}}))
    (job / ".hydra" / "overrides.yaml").write_text("- probe.regularization=1\n")
    os.utime(job / "metrics.json", (1, 1))  # left by an earlier sweep into the same folder
    row = read_job(job, tmp_path, ".hydra")
    assert (row.job, row.overrides, row.status) == ("0", ["probe.regularization=1"], "failed")
    assert row.error.startswith("did not finish")


def test_unexpected_exception_in_a_sweep_job_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import probe_lab.__main__ as cli

    def boom(*_: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "run", boom)
    assert math.isnan(cli.sweep_job(None, tmp_path))  # type: ignore[arg-type]
    text = (tmp_path / "error.txt").read_text()
    assert text.splitlines()[0] == "RuntimeError: boom" and "Traceback" in text
    assert error_line(ProbeLabError("bad setting")) == "bad setting"


def test_joblib_launcher_runs_a_two_job_sweep(tmp_path: Path) -> None:
    """conf/hydra/launcher/parallel.yaml: the jobs run in joblib worker processes, summarized as usual."""
    result = run_sweep(tmp_path, "hydra/launcher=parallel", "probe.regularization=0.1,10")
    assert result.returncode == 0, result.stderr
    launcher = OmegaConf.load(result.sweep_dir / "multirun.yaml").hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 2
    rows = result.rows()
    assert [row["status"] for row in rows] == ["completed", "completed"]
    for row in rows:
        assert float(row["val_auroc"]) == result.metrics(row["job"])["val"]["auroc"]
