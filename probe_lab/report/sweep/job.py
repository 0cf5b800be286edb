"""One job of a Hydra multirun: what it writes into its folder, and that folder read back as a `JobRow`.

A job first gives its folder a fresh id (`start_job`) and then marks each outcome file it writes with it:
metrics.json, or an experiment=parity run's parity.json, under the key `JOB_ID_KEY`; error.txt
(`record_failure`) on its last line. `read_job` counts an outcome file only when it carries the id the
folder holds now, so a file left by an earlier sweep into the same folder is never taken for this job's
outcome, whichever machines (and clocks) the jobs ran on.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from probe_lab.artifacts import atomic_write_bytes
from probe_lab.errors import ProbeLabError

log = logging.getLogger(__name__)

JOB_ID_FILE = "job_id"  # in the job folder, beside Hydra's output subfolder (.hydra/)
JOB_ID_KEY = "job_id"  # metrics.json's and parity.json's key for the id of the job that wrote them
ERROR_FILE = "error.txt"
METRICS_FILE = "metrics.json"
PARITY_FILE = "parity.json"  # an experiment=parity job's comparison
INTERVALS_KEY = "test_intervals"  # metrics.json's {metric: {low, high}, confidence, resamples}, when bootstrapped
ERROR_JOB_ID_PREFIX = "job_id: "  # error.txt's last line; its first line is the error line
COMPLETED, FAILED = "completed", "failed"


@dataclass(frozen=True)
class JobRow:
    """One job of a sweep: its folder (relative to the sweep folder), overrides and outcome."""

    job: str
    overrides: list[str]
    status: str
    backend: str = ""
    val_auroc: float | None = None
    test_auroc: float | None = None
    fit_seconds: float | None = None
    error: str = ""
    parity: dict[str, Any] | None = None  # an experiment=parity job's comparison (parity.json, less its job id)
    test_auroc_low: float | None = None  # the test metrics' bootstrap intervals (metrics.json's test_intervals)
    test_auroc_high: float | None = None
    test_ap: float | None = None
    test_ap_low: float | None = None
    test_ap_high: float | None = None
    interval_confidence: float | None = None
    interval_resamples: int | None = None

    @property
    def settings(self) -> dict[str, str]:
        """The overrides as {key: value}."""
        return dict(split_override(item) for item in self.overrides)


def split_override(override: str) -> tuple[str, str]:
    """`key=value` (with Hydra's optional `+`, `++` or `~` prefix) as (key, value)."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def start_job(job_dir: Path) -> str:
    """Give the job folder a fresh id (uuid4 hex, in its `job_id` file) and return it.

    Every job of a multirun calls this before anything else; from then on the folder's outcome files count
    only if they carry this id. The file is replaced atomically: a reader sees the old id or the new one.
    """
    job_id = uuid.uuid4().hex
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(job_dir / JOB_ID_FILE, (job_id + "\n").encode())
    return job_id


def error_line(err: BaseException) -> str:
    """The one line that describes a failed job: a ProbeLabError's message, else the exception's type and text."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(err, ProbeLabError):
        return first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def record_failure(job_dir: Path, line: str, details: str, job_id: str | None) -> None:
    """Write error.txt into a run or job folder: the error line first, then any details (a traceback; ""
    for none), then a sweep job's id (from `start_job`; None for a single run) on a line of its own."""
    body = f"\n{details.rstrip()}\n" if details else ""
    tail = f"\n{ERROR_JOB_ID_PREFIX}{job_id}\n" if job_id is not None else ""
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(job_dir / ERROR_FILE, f"{line}\n{body}{tail}".encode())
    except OSError as err:  # a full disk, say: the line on stderr and in the log is the record
        log.warning("%s: could not be written (%s)", job_dir / ERROR_FILE, err.strerror or err)


def read_job(job_dir: Path, sweep_dir: Path, output_subdir: str) -> JobRow:
    """A job folder as a row: failed (error.txt), completed (metrics.json, else an experiment=parity run's
    parity.json), or "did not finish" when the folder has no id or none of its outcome files carries it."""
    overrides = [str(item) for item in OmegaConf.load(job_dir / output_subdir / "overrides.yaml")]
    job = job_dir.relative_to(sweep_dir).as_posix()
    job_id = read_job_id(job_dir)
    if job_id is not None:
        if (error := own_error(job_dir, job_id)) is not None:
            return JobRow(job, overrides, FAILED, error=error)
        for name, row_from in ((METRICS_FILE, metrics_row), (PARITY_FILE, parity_row)):
            try:
                if (outcome := own_json(job_dir / name, job_id)) is not None:
                    return row_from(job, overrides, outcome)
            except (ValueError, KeyError, TypeError) as err:
                return JobRow(job, overrides, FAILED, error=f"unreadable {name}: {error_line(err)}")
    return JobRow(job, overrides, FAILED, error=f"did not finish (no {METRICS_FILE} or {ERROR_FILE})")


def read_job_id(job_dir: Path) -> str | None:
    """The id `start_job` gave the folder, or None when it has none."""
    path = job_dir / JOB_ID_FILE
    job_id = path.read_text().strip() if path.is_file() else ""
    return job_id or None


def own_error(job_dir: Path, job_id: str) -> str | None:
    """error.txt's error line when the file is the job's (its last line names job_id), else None."""
    path = job_dir / ERROR_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    return lines[0] if lines and lines[-1] == ERROR_JOB_ID_PREFIX + job_id else None


def own_json(path: Path, job_id: str) -> dict[str, Any] | None:
    """The JSON object in the file when it carries job_id; None when the file is absent or another job's.

    Raises ValueError or TypeError when the file is not a JSON object: whose it is cannot be told, and it is
    reported as unreadable rather than ignored.
    """
    if not path.is_file():
        return None
    outcome = json.loads(path.read_text())
    if not isinstance(outcome, dict):
        raise TypeError("not a JSON object")
    return outcome if outcome.get(JOB_ID_KEY) == job_id else None


def metrics_row(job: str, overrides: list[str], metrics: dict[str, Any]) -> JobRow:
    """A completed job's row from its metrics.json; the interval fields stay None without its test_intervals
    (a run with eval.bootstrap_resamples=0, or one from before they were recorded)."""
    backend, val_auroc = str(metrics["backend"]), float(metrics["val"]["auroc"])
    test_auroc, fit_seconds = float(metrics["test"]["auroc"]), float(metrics["fit_seconds"])
    intervals = metrics.get(INTERVALS_KEY)
    auroc_low, auroc_high = interval_ends(intervals, "auroc")
    ap_low, ap_high = interval_ends(intervals, "ap")
    test_ap = metrics["test"].get("ap")
    return JobRow(
        job,
        overrides,
        COMPLETED,
        backend=backend,
        val_auroc=val_auroc,
        test_auroc=test_auroc,
        fit_seconds=fit_seconds,
        test_auroc_low=auroc_low,
        test_auroc_high=auroc_high,
        test_ap=None if test_ap is None else float(test_ap),
        test_ap_low=ap_low,
        test_ap_high=ap_high,
        interval_confidence=None if intervals is None else float(intervals["confidence"]),
        interval_resamples=None if intervals is None else int(intervals["resamples"]),
    )


def interval_ends(intervals: dict[str, Any] | None, metric: str) -> tuple[float | None, float | None]:
    """(low, high) of the metric's interval in metrics.json's test_intervals; (None, None) where it has none."""
    if intervals is None or metric not in intervals:
        return None, None
    return float(intervals[metric]["low"]), float(intervals[metric]["high"])


def parity_row(job: str, overrides: list[str], numbers: dict[str, Any]) -> JobRow:
    """A completed experiment=parity job's row from its parity.json: both backends, the better one's AUROCs."""
    from probe_lab.report.parity import compared_backends  # numpy and the probe's torch: only for parity jobs

    backends = compared_backends(numbers)
    best = max(backends, key=lambda name: numbers[name]["val_auroc"])
    return JobRow(
        job,
        overrides,
        COMPLETED,
        backend="+".join(backends),
        val_auroc=float(numbers[best]["val_auroc"]),
        test_auroc=float(numbers[best]["test_auroc"]),
        fit_seconds=sum(float(numbers[name]["fit_seconds"]) for name in backends),
        parity={key: value for key, value in numbers.items() if key != JOB_ID_KEY},
    )
