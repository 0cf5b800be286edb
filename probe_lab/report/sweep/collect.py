"""Across the jobs of a sweep: their rows in job order, the keys that were swept, the best job, backend pairs."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from probe_lab.report.parity import BackendOutcome, compare
from probe_lab.report.sweep.job import COMPLETED, JobRow, read_job, split_override


def collect_rows(sweep_dir: Path, output_subdir: str) -> list[JobRow]:
    """Every job folder under the sweep folder (one holding Hydra's saved overrides) as a row, in job order:
    numbered folders by number, then any others by name."""
    folders = [path.parent.parent for path in sweep_dir.rglob(f"{output_subdir}/overrides.yaml")]

    def order(folder: Path) -> tuple[int, str]:
        name = folder.relative_to(sweep_dir).as_posix()
        return (int(name), "") if name.isdigit() else (sys.maxsize, name)

    return [read_job(folder, sweep_dir, output_subdir) for folder in sorted(folders, key=order)]


def swept_keys(rows: list[JobRow]) -> list[str]:
    """The override keys whose value differs between jobs, in the order they were given."""
    keys = dict.fromkeys(key for row in rows for key in row.settings)
    return [key for key in keys if len({row.settings.get(key) for row in rows}) > 1]


def numeric_values(rows: list[JobRow], key: str) -> list[float] | None:
    """The key's value for each row as a finite number, or None if a value is missing or not numeric."""
    try:
        values = [float(row.settings[key]) for row in rows]
    except (KeyError, ValueError):
        return None
    return values if all(math.isfinite(value) for value in values) else None


def best_job(rows: list[JobRow]) -> JobRow | None:
    """The completed job with the highest validation AUROC (the first one on a tie)."""
    scored = [row for row in rows if row.val_auroc is not None and not math.isnan(row.val_auroc)]
    return max(scored, key=lambda row: row.val_auroc or 0.0, default=None)


def describe(row: JobRow, keys: list[str]) -> str:
    """The row's overrides for the swept keys (all of them when nothing was swept)."""
    shown = [item for item in row.overrides if split_override(item)[0] in keys] if keys else row.overrides
    return " ".join(shown)


def backend_pairs(rows: list[JobRow], sweep_dir: Path) -> list[dict[str, Any]]:
    """Jobs that differ only in their backend (sklearn and pytorch), compared as experiment=parity does;
    experiment=parity jobs bring their own comparison. Each pair: {"overrides", "jobs", **compare's numbers}."""
    groups: dict[tuple[tuple[str, str], ...], dict[str, JobRow]] = {}
    for row in rows:
        if row.status == COMPLETED:
            shared = tuple(sorted((k, v) for k, v in row.settings.items() if k != "backend"))
            groups.setdefault(shared, {})[row.backend] = row
    swept = swept_keys(rows)
    pairs = [
        {"overrides": describe(row, swept), "jobs": [row.job], **row.parity} for row in rows if row.parity is not None
    ]
    for shared, by_backend in groups.items():
        if {"sklearn", "pytorch"} <= by_backend.keys():
            jobs = [by_backend["sklearn"].job, by_backend["pytorch"].job]
            outcomes = [BackendOutcome.from_run_folder(sweep_dir / job) for job in jobs]
            overrides = " ".join(f"{key}={value}" for key, value in shared if key in swept)
            pairs.append({"overrides": overrides, "jobs": jobs, **compare(*outcomes)})
    return pairs
