"""Load: a sweep of 50 jobs in parallel workers, one of them stopped mid-fit, completes and reports
every job."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.load


def test_a_sweep_of_50_jobs_with_one_stopped_reports_it_and_completes_the_others(tmp_path: Path) -> None:
    """50 jobs in 2 joblib workers; job 17 is sent SIGTERM mid-fit (tests/signal_callback.py), as a
    scheduler stops a job: it is reported failed, and the other 49 finish with their own artifacts."""
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "probe_lab",
        "-m",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        "progress_bar=false",
        "backend=pytorch",
        "device=cpu",
        "data.n=300",
        "data.dim=8",
        "eval.bootstrap_resamples=0",
        "seed=range(50)",
        "+callbacks.stop._target_=signal_callback.SignalAt",
        "+callbacks.stop.epoch=0",
        "+callbacks.stop.batch=0",
        f"+callbacks.stop.signal={int(signal.SIGTERM)}",
        f"+callbacks.stop.once={tmp_path / 'signalled'}",
        "+callbacks.stop.only_seed=17",
        "+callbacks.stop.seed=${seed}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "HYDRA_FULL_ERROR": "0"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 1, done.stderr  # a sweep with a failed job exits non-zero, after its summary
    with (sweep_dir / "summary.csv").open(newline="") as handle:
        rows = {row["job"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 50
    stopped = rows.pop("17")
    assert stopped["status"] == "failed" and stopped["error"].startswith("stopped by SIGTERM"), stopped
    assert not (sweep_dir / "17" / "probe.safetensors").exists()
    for job, row in rows.items():
        assert row["status"] == "completed", (job, row)
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert float(row["val_auroc"]) == metrics["val"]["auroc"]
        assert (sweep_dir / job / "probe.safetensors").is_file()
        assert not list((sweep_dir / job).glob(".staging*"))
    assert "  failed   job 17 (seed=17): stopped by SIGTERM" in done.stdout
