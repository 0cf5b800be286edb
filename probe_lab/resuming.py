"""A run folder's staging (`run_staging`): a full disk while the run writes its files is one line, and
a run that resumes: `resume=true` (or a SLURM job that was requeued) stages into the folder an
earlier, stopped run of the same command staged into, so that its fits go on from their resume points
(`probe_lab.fit.resume`).

The stopped run's settings are kept beside its resume points (`resume/config.json`); a resuming run
with other settings is refused, since its fits would continue another run's.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from probe_lab.artifacts import RESUME, STAGING, out_of_space, staged_artifacts, write_json
from probe_lab.errors import ProbeLabError

log = logging.getLogger(__name__)

SETTINGS = "config.json"
IGNORED = ("resume", "progress_bar")  # settings a resumed run may change: they do not change the fits


def requeued() -> bool:
    """Whether this process is a SLURM job that SLURM requeued (after a preemption or a time limit)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


@contextmanager
def run_staging(out_dir: Path, resolved_config: dict[str, Any], *, resume: bool) -> Iterator[Path]:
    """`staged_artifacts` of a run folder: resumable, and resuming when asked (or requeued) and a stopped
    run of the same settings left a resume point; otherwise emptied first, as for a fresh run."""
    settings = {key: value for key, value in resolved_config.items() if key not in IGNORED}
    resume = (resume or requeued()) and can_resume(out_dir / STAGING / RESUME, settings, out_dir)
    try:
        with staged_artifacts(out_dir, resumable=True, resume=resume) as staging:
            if resume:
                keep_earlier_logs(staging / "logs")
            (staging / RESUME).mkdir(exist_ok=True)
            write_json(staging / RESUME / SETTINGS, settings)
            yield staging
    except Exception as err:
        if not out_of_space(err):
            raise
        raise ProbeLabError(
            f"{out_dir}: no space left on device while the run wrote its files; nothing of it was published "
            "and the folder's earlier files are as they were"
        ) from err


def can_resume(points: Path, settings: dict[str, Any], out_dir: Path) -> bool:
    """Whether `points` holds a stopped run's resume point to go on from; refuses one of other settings."""
    if not any(points.rglob("*.ckpt")):
        log.warning("resume=true: %s holds no stopped run to resume; starting from the beginning", out_dir)
        return False
    try:
        earlier = json.loads((points / SETTINGS).read_text())
    except (OSError, ValueError):
        earlier = None
    if earlier != settings:
        changed = sorted(_differences(earlier, settings)) if isinstance(earlier, dict) else ["its record is unreadable"]
        raise ProbeLabError(
            f"resume=true: the stopped run in {out_dir} had other settings ({', '.join(changed[:5])}); "
            "run its command again with resume=true, or leave resume out to start afresh"
        )
    return True


def keep_earlier_logs(logs: Path) -> None:
    """Lightning's CSVLogger starts its metrics.csv afresh; the stopped run's rows are kept beside it as
    metrics.stopped-<k>.csv (k = 1 for the first stop)."""
    if not (logs / "metrics.csv").is_file():
        return
    stops = 1 + len(list(logs.glob("metrics.stopped-*.csv")))
    (logs / "metrics.csv").replace(logs / f"metrics.stopped-{stops}.csv")


def _differences(earlier: Any, now: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(earlier, dict) and isinstance(now, dict):
        for key in sorted(set(earlier) | set(now)):
            yield from _differences(earlier.get(key), now.get(key), f"{prefix}{key}.")
    elif earlier != now:
        yield f"{prefix.rstrip('.')}: {earlier!r} → {now!r}"
