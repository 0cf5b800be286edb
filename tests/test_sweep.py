"""`python -m probe_lab -m ...` (Hydra multirun) end to end, and the pieces of its summary."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from omegaconf import OmegaConf

from probe_lab.errors import ProbeLabError
from probe_lab.report.plots import sweep_figure
from probe_lab.report.sweep.job import JobRow, error_line, read_job, read_job_id, record_failure, start_job
from probe_lab.report.sweep.render import terminal_lines, write_csv, write_markdown

SMALL = ("data.n=400", "data.dim=16")  # synthetic data, small


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


def run_sweep(tmp_path: Path, *overrides: str, data: tuple[str, ...] = SMALL) -> SweepResult:
    """`python -m probe_lab -m progress_bar=false data... overrides... hydra.sweep.dir=tmp_path/sweep` in a
    subprocess; `data` are the data overrides (SMALL synthetic data unless given)."""
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    quiet = "progress_bar=false"
    command = [sys.executable, "-m", "probe_lab", "-m", quiet, *data, *overrides, f"hydra.sweep.dir={sweep_dir}"]
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


def sweep_rows() -> list[JobRow]:
    """Regularization (given out of order) x backend x layer, layer 1 the better; and a failed job."""
    rows = []
    for step, regularization in enumerate(("100", "0.01", "1")):
        for backend in ("sklearn", "pytorch"):
            for layer in (0, 1):
                val = 0.6 + 0.1 * layer + 0.01 * step
                overrides = [f"probe.regularization={regularization}", f"backend={backend}", f"data.layer={layer}"]
                rows.append(JobRow(str(len(rows)), overrides, "completed", backend, val, val - 0.05, 0.1))
    failed = ["probe.regularization=1000", "backend=sklearn", "data.layer=0"]
    return [*rows, JobRow(str(len(rows)), failed, "failed", error="boom")]


def test_sweep_plot_draws_per_backend_the_best_job_at_each_value_on_a_log_axis() -> None:
    fig = sweep_figure(sweep_rows())
    by_regularization, by_layer = fig.axes
    assert (by_regularization.get_xlabel(), by_layer.get_xlabel()) == ("probe.regularization", "data.layer")
    assert by_regularization.get_title() == "best over data.layer"
    assert (by_regularization.get_xscale(), by_layer.get_xscale()) == ("log", "linear")
    *lines, failed = by_regularization.get_lines()
    assert [line.get_label() for line in lines] == ["pytorch val", "pytorch test", "sklearn val", "sklearn test"]
    assert (failed.get_label(), list(failed.get_xdata())) == ("failed (1)", [1000.0])  # marked, not an AUROC
    assert all(list(line.get_xdata()) == [0.01, 1.0, 100.0] for line in lines)
    for line, aurocs in zip(lines, [[0.71, 0.72, 0.70], [0.66, 0.67, 0.65]] * 2, strict=True):
        assert list(line.get_ydata()) == pytest.approx(aurocs)  # layer 1's, the better job at each value
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "--"]
    plt.close(fig)


def test_sweep_plot_without_a_numeric_key_shows_each_job() -> None:
    backends = ("sklearn", "pytorch")
    rows = [JobRow(str(i), [f"backend={b}"], "completed", b, 0.9, 0.8, 0.1) for i, b in enumerate(backends)]
    fig = sweep_figure(rows)
    (ax,) = fig.axes
    assert ax.get_title() == "AUROC per job"
    assert [(line.get_label(), list(line.get_xdata())) for line in ax.get_lines()] == [
        ("pytorch val", ["1"]),
        ("pytorch test", ["1"]),
        ("sklearn val", ["0"]),
        ("sklearn test", ["0"]),
    ]
    plt.close(fig)


METRICS = {"backend": "sklearn", "val": {"auroc": 0.9}, "test": {"auroc": 0.8}, "fit_seconds": 0.5}
COMPLETED_ROW = JobRow("0", ["probe.regularization=1"], "completed", "sklearn", 0.9, 0.8, 0.5)
NOT_FINISHED = ("failed", "did not finish (no metrics.json or error.txt)")


def job_folder(sweep_dir: Path, *overrides: str) -> Path:
    """Job 0 of a sweep as Hydra leaves it before the job runs: only its saved overrides."""
    job = sweep_dir / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    return job


def write_metrics(job: Path, job_id: str | None) -> None:
    metrics = METRICS if job_id is None else {**METRICS, "job_id": job_id}
    (job / "metrics.json").write_text(json.dumps(metrics))


def test_an_earlier_sweeps_outcome_in_the_same_folder_is_not_this_jobs(tmp_path: Path) -> None:
    job = job_folder(tmp_path, "probe.regularization=1")
    earlier = start_job(job)
    write_metrics(job, earlier)
    assert read_job(job, tmp_path, ".hydra") == COMPLETED_ROW
    now = start_job(job)  # a new sweep into the same folder starts job 0 again, say on another machine
    assert now != earlier and read_job_id(job) == now
    row = read_job(job, tmp_path, ".hydra")
    assert (row.status, row.error) == NOT_FINISHED  # ...which was stopped before it wrote anything
    write_metrics(job, now)
    assert read_job(job, tmp_path, ".hydra") == COMPLETED_ROW
    assert sorted(path.name for path in job.iterdir()) == [".hydra", "job_id", "metrics.json"]  # no temporary left


def test_a_folder_without_a_job_id_did_not_finish(tmp_path: Path) -> None:
    job = job_folder(tmp_path, "probe.regularization=1")
    write_metrics(job, None)
    row = read_job(job, tmp_path, ".hydra")
    assert (row.job, row.overrides, row.status, row.error) == ("0", ["probe.regularization=1"], *NOT_FINISHED)
    record_failure(job, "some error", "", "0" * 32)
    row = read_job(job, tmp_path, ".hydra")
    assert (row.status, row.error) == NOT_FINISHED


def test_a_failure_counts_only_while_it_carries_the_job_id(tmp_path: Path) -> None:
    job = job_folder(tmp_path, "probe.regularization=1")
    record_failure(job, "data.x: file not found", "Traceback (most recent call last):\n  ...\n", start_job(job))
    text = (job / "error.txt").read_text()
    assert text.splitlines()[0] == "data.x: file not found" and "\nTraceback (most recent call last):\n" in text
    row = read_job(job, tmp_path, ".hydra")
    assert (row.status, row.error) == ("failed", "data.x: file not found")
    write_metrics(job, start_job(job))  # the job ran again and completed; its earlier error.txt stays
    assert read_job(job, tmp_path, ".hydra") == COMPLETED_ROW


def test_a_parity_jobs_comparison_is_its_outcome_without_its_job_id(tmp_path: Path) -> None:
    job = job_folder(tmp_path, "experiment=parity")
    numbers = {
        "sklearn": {"val_auroc": 0.9, "test_auroc": 0.8, "fit_seconds": 1.0},
        "pytorch": {"val_auroc": 0.95, "test_auroc": 0.7, "fit_seconds": 2.0},
        "abs_delta_test_auroc": 0.1,
        "weight_cosine": 0.99,
        "test_score_pearson": 0.98,
        "max_abs_delta_probability": 0.2,
    }
    (job / "parity.json").write_text(json.dumps({**numbers, "job_id": start_job(job)}))
    row = read_job(job, tmp_path, ".hydra")
    assert (row.status, row.backend, row.val_auroc, row.test_auroc) == ("completed", "sklearn+pytorch", 0.95, 0.7)
    assert (row.fit_seconds, row.parity) == (3.0, numbers)


def test_an_unreadable_outcome_file_is_a_failure_that_names_it(tmp_path: Path) -> None:
    job = job_folder(tmp_path, "probe.regularization=1")
    job_id = start_job(job)
    (job / "metrics.json").write_text(json.dumps({"backend": "sklearn", "job_id": job_id}))
    assert read_job(job, tmp_path, ".hydra").error == "unreadable metrics.json: KeyError: 'val'"
    (job / "metrics.json").write_text(json.dumps({**METRICS, "job_id": job_id})[:-10])  # cut short
    row = read_job(job, tmp_path, ".hydra")
    assert row.status == "failed" and row.error.startswith("unreadable metrics.json: JSONDecodeError: ")


INTERVALS = {
    "auroc": {"low": 0.75, "high": 0.85},
    "ap": {"low": 0.6, "high": 0.7},
    "recall_at_1pct_fpr": {"low": 0.1, "high": 0.3},
    "confidence": 0.95,
    "resamples": 1000,
}


def summary_of(tmp_path: Path, rows: list[JobRow]) -> tuple[list[dict[str, str]], str, list[str]]:
    """The rows as summary.csv (read back), summary.md and the terminal lines."""
    write_csv(tmp_path / "summary.csv", rows)
    write_markdown(tmp_path / "summary.md", rows, tmp_path, [])
    with (tmp_path / "summary.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    return table, (tmp_path / "summary.md").read_text(), terminal_lines(rows, tmp_path, written=True)


def test_a_jobs_test_intervals_reach_the_summary(tmp_path: Path) -> None:
    job = job_folder(tmp_path / "sweep", "probe.regularization=1")
    metrics = {**METRICS, "test": {"auroc": 0.8, "ap": 0.65}, "test_intervals": INTERVALS, "job_id": start_job(job)}
    (job / "metrics.json").write_text(json.dumps(metrics))
    row = read_job(job, tmp_path / "sweep", ".hydra")
    assert (row.test_auroc, row.test_auroc_low, row.test_auroc_high) == (0.8, 0.75, 0.85)
    assert (row.test_ap, row.test_ap_low, row.test_ap_high) == (0.65, 0.6, 0.7)
    assert (row.interval_confidence, row.interval_resamples) == (0.95, 1000)
    (line,), markdown, terminal = summary_of(tmp_path, [row])
    assert (line["test_auroc"], line["test_auroc_low"], line["test_auroc_high"]) == ("0.8", "0.75", "0.85")
    assert (line["test_ap"], line["test_ap_low"], line["test_ap_high"]) == ("0.65", "0.6", "0.7")
    assert (line["interval_confidence"], line["interval_resamples"]) == ("0.95", "1000")
    assert "| 0.9000 | 0.8000 [0.7500, 0.8500] | 0.6500 [0.6000, 0.7000] | 0.500 | completed |" in markdown
    assert "- test AUROC and AP in brackets: their bootstrap intervals (95%, 1000 resamples)" in markdown
    assert "val AUROC 0.9000, test AUROC 0.8000 [0.7500, 0.8500], sklearn backend" in terminal[1]


def test_a_job_without_test_intervals_leaves_them_blank(tmp_path: Path) -> None:
    """A run with eval.bootstrap_resamples=0, or one written before runs recorded intervals."""
    old = job_folder(tmp_path / "old", "probe.regularization=1")
    write_metrics(old, start_job(old))
    row = read_job(old, tmp_path / "old", ".hydra")
    assert row == COMPLETED_ROW and row.test_auroc_low is row.test_auroc_high is row.test_ap is None
    (line,), markdown, terminal = summary_of(tmp_path, [row])
    interval_columns = ("test_auroc_low", "test_auroc_high", "test_ap", "test_ap_low", "test_ap_high")
    assert [line[name] for name in interval_columns] == [""] * 5 and line["test_auroc"] == "0.8"
    assert "| 0.9000 | 0.8000 |  | 0.500 | completed |" in markdown and "in brackets" not in markdown
    assert "test AUROC 0.8000, sklearn backend" in terminal[1]

    new = job_folder(tmp_path / "new", "probe.regularization=10")
    (new / "metrics.json").write_text(json.dumps({**METRICS, "test_intervals": INTERVALS, "job_id": start_job(new)}))
    both = [row, replace(read_job(new, tmp_path / "new", ".hydra"), job="1")]
    lines, markdown, _ = summary_of(tmp_path, both)
    assert [line["test_auroc_low"] for line in lines] == ["", "0.75"]
    assert "| 0 | `probe.regularization=1` | sklearn | 0.9000 | 0.8000 |  | 0.500 | completed |" in markdown
    assert "| 1 | `probe.regularization=10` | sklearn | 0.9000 | 0.8000 [0.7500, 0.8500] |  | 0.500 |" in markdown


def test_error_line_is_our_message_or_the_exceptions_type_and_first_line() -> None:
    assert error_line(ProbeLabError("bad setting\nmore")) == "bad setting"
    assert error_line(RuntimeError("boom\nsecond line")) == "RuntimeError: boom"
    assert error_line(KeyError()) == "KeyError"


def test_unexpected_exception_in_a_sweep_job_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import probe_lab.__main__ as cli

    def boom(*_: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("probe_lab.run.run", boom)  # sweep_job imports run when it is called
    job = job_folder(tmp_path, "probe.regularization=1")
    write_metrics(job, start_job(job))  # an earlier sweep's job 0 completed
    assert math.isnan(cli.sweep_job(None, job))  # type: ignore[arg-type]
    text = (job / "error.txt").read_text()
    assert text.splitlines()[0] == "RuntimeError: boom" and "Traceback" in text
    row = read_job(job, tmp_path, ".hydra")
    assert (row.status, row.error) == ("failed", "RuntimeError: boom")


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
