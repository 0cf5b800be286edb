"""A sweep's rows as text: summary.csv for programs, summary.md for people, and the lines the terminal shows."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from probe_lab.report.summary import parity_lines
from probe_lab.report.sweep.collect import best_job, describe, swept_keys
from probe_lab.report.sweep.job import FAILED, PARITY_FILE, JobRow, split_override

SUMMARY_FILES = ("summary.csv", "summary.md", "sweep.png")  # and PARITY_FILE when there are backend pairs
CSV_FIELDS = (
    "job",
    "overrides",
    "backend",
    "val_auroc",
    "test_auroc",
    "test_auroc_low",
    "test_auroc_high",
    "test_ap",
    "test_ap_low",
    "test_ap_high",
    "interval_confidence",
    "interval_resamples",
    "fit_seconds",
    "status",
    "error",
)


def write_csv(path: Path, rows: Iterable[JobRow]) -> None:
    """One line per job; numbers at full precision, empty where a job has none (a failed job; the interval
    columns of a job without bootstrap intervals)."""

    def cell(value: Any) -> str:
        return "" if value is None else str(value)

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for row in rows:
            record = {**vars(row), "overrides": " ".join(row.overrides)}
            writer.writerow([cell(record[name]) for name in CSV_FIELDS])


def write_markdown(path: Path, rows: list[JobRow], sweep_dir: Path, pairs: list[dict[str, Any]]) -> None:
    """A table for people: overrides shared by every job once above it, each job's own ones in it, test
    AUROC and AP with their bootstrap intervals in brackets where the job has them; then the backend pairs
    (`backend_pairs`), if any, in a table of their own."""
    keys = swept_keys(rows)
    failed = sum(row.status == FAILED for row in rows)
    lines = [
        "# Sweep summary",
        "",
        f"- sweep folder `{sweep_dir}`: {len(rows)} jobs, {len(rows) - failed} completed, {failed} failed",
    ]
    if best := best_job(rows):
        lines.append(f"- best by validation AUROC: job {best.job} (`{describe(best, keys)}`), {best.val_auroc:.4f}")
    common = [item for item in rows[0].overrides if split_override(item)[0] not in keys] if rows and keys else []
    if common:
        lines.append(f"- overrides of every job: `{' '.join(common)}`")
    if bootstraps := interval_settings(rows):
        lines.append(f"- test AUROC and AP in brackets: their bootstrap intervals ({bootstraps})")
    lines += [
        "",
        "| job | overrides | backend | val AUROC | test AUROC | test AP | fit s | status |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        status = f"{FAILED}: {escape(row.error)}" if row.status == FAILED else row.status
        lines.append(
            f"| {row.job} | `{escape(describe(row, keys))}` | {row.backend} | {number(row.val_auroc, 4)} | "
            f"{with_interval(row.test_auroc, row.test_auroc_low, row.test_auroc_high, 4)} | "
            f"{with_interval(row.test_ap, row.test_ap_low, row.test_ap_high, 4)} | {number(row.fit_seconds, 3)} | "
            f"{status} |"
        )
    if pairs:
        lines += ["", *parity_table(pairs)]
    path.write_text("\n".join(lines) + "\n")


def parity_table(pairs: list[dict[str, Any]]) -> list[str]:
    """summary.md's section on backend pairs: one line per pair."""
    return [
        "## Backend parity (jobs that differ only in backend)",
        "",
        "| jobs | overrides | abs Δ test AUROC | weight cosine | test score Pearson | max abs Δ p |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {' / '.join(pair['jobs'])} | `{escape(pair['overrides'])}` | {pair['abs_delta_test_auroc']:.4f} "
            f"| {pair['weight_cosine']:.6f} | {pair['test_score_pearson']:.6f} "
            f"| {pair['max_abs_delta_probability']:.4f} |"
            for pair in pairs
        ),
    ]


def number(value: float | None, digits: int) -> str:
    """A table cell: the number to `digits` decimals, empty for none."""
    return "" if value is None else f"{value:.{digits}f}"


def with_interval(value: float | None, low: float | None, high: float | None, digits: int) -> str:
    """A number to `digits` decimals followed by its interval, `0.9120 [0.8870, 0.9340]`; just the number
    without an interval, and empty without a number."""
    if value is None or low is None or high is None:
        return number(value, digits)
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def interval_settings(rows: list[JobRow]) -> str:
    """The confidence and resamples of the jobs' bootstrap intervals, `95%, 1000 resamples`, each setting
    once (joined by `; `); empty when no job has intervals."""
    settings = dict.fromkeys(
        (row.interval_confidence, row.interval_resamples) for row in rows if row.interval_confidence is not None
    )
    return "; ".join(f"{confidence:.0%}, {resamples} resamples" for confidence, resamples in settings)


def escape(text: str) -> str:
    """Text that may sit in a Markdown table cell."""
    return text.replace("|", "\\|")


def terminal_lines(
    rows: list[JobRow], sweep_dir: Path, written: bool, pairs: list[dict[str, Any]] | None = None
) -> list[str]:
    """What the terminal shows at the end of a sweep: the counts, the best job (its test AUROC with its
    bootstrap interval when it has one), each failure, each backend pair, and the files written (only when
    `written`)."""
    keys = swept_keys(rows)
    failed = [row for row in rows if row.status == FAILED]
    lines = [f"probe_lab: sweep of {len(rows)} jobs: {len(rows) - len(failed)} completed, {len(failed)} failed"]
    if best := best_job(rows):
        lines.append(
            f"  best     job {best.job} ({describe(best, keys)}): val AUROC {best.val_auroc:.4f}, "
            f"test AUROC {with_interval(best.test_auroc, best.test_auroc_low, best.test_auroc_high, 4)}, "
            f"{best.backend} backend, {sweep_dir / best.job}"
        )
    lines += [f"  failed   job {row.job} ({describe(row, keys)}): {row.error}" for row in failed]
    for pair in pairs or []:
        jobs = f"jobs {' and '.join(pair['jobs'])}" if len(pair["jobs"]) > 1 else f"job {pair['jobs'][0]}"
        lines.append(f"  parity   {jobs} ({pair['overrides'] or 'same settings'}):")
        lines += ["  " + line for line in parity_lines(pair)]
    if written:
        files = SUMMARY_FILES + ((PARITY_FILE,) if pairs else ())
        lines.append(f"  summary  {sweep_dir}: {', '.join(files)}")
    return lines
