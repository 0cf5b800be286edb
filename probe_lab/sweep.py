"""The end of a Hydra multirun: one row per job as summary.csv, summary.md and sweep.png, and the best job.

Each job records its own outcome in its folder — metrics.json when it succeeds (see `run`), error.txt when
it fails (`record_failure`) — so the summary does not depend on where the jobs ran: launchers such as
joblib or submitit run them in other processes. When the sweep ends, `SweepSummary.on_multirun_end` finds
the job folders by the overrides Hydra saved in each (`<job folder>/.hydra/overrides.yaml`), reads every
folder into a `JobRow`, writes the files into the sweep folder and exits non-zero if any job failed.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from probe_lab.errors import ProbeLabError
from probe_lab.parity import BackendOutcome, compare, parity_lines

ERROR_FILE = "error.txt"
METRICS_FILE = "metrics.json"
SUMMARY_FILES = ("summary.csv", "summary.md", "sweep.png")
PARITY_FILE = "parity.json"  # written when jobs differ only in backend=sklearn,pytorch
CSV_FIELDS = ("job", "overrides", "backend", "val_auroc", "test_auroc", "fit_seconds", "status", "error")
COMPLETED, FAILED = "completed", "failed"
LOG_SCALE_KEYS = {"regularization"}  # last part of a key that is always plotted on a log axis
LOG_SCALE_SPAN = 100.0  # ... as is any key whose positive values span more than two decades


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
    parity: dict[str, Any] | None = None  # an experiment=parity job's comparison (parity.json)

    @property
    def settings(self) -> dict[str, str]:
        """The overrides as {key: value}."""
        return dict(split_override(item) for item in self.overrides)


def split_override(override: str) -> tuple[str, str]:
    """`key=value` (with Hydra's optional `+`, `++` or `~` prefix) as (key, value)."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def error_line(err: BaseException) -> str:
    """The one line that describes a failed job: a ProbeLabError's message, else the exception's type and text."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(err, ProbeLabError):
        return first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def record_failure(job_dir: Path, line: str, details: str = "") -> None:
    """Write error.txt into a job folder: the error line first, then any details (a traceback)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / ERROR_FILE).write_text(line + "\n" + (f"\n{details.rstrip()}\n" if details else ""))


def job_folders(sweep_dir: Path, output_subdir: str) -> list[Path]:
    """Every job folder under the sweep folder (one holding Hydra's saved overrides), in job order."""
    folders = [path.parent.parent for path in sweep_dir.rglob(f"{output_subdir}/overrides.yaml")]

    def order(folder: Path) -> tuple[int, str]:
        name = folder.relative_to(sweep_dir).as_posix()
        return (int(name), "") if name.isdigit() else (sys.maxsize, name)

    return sorted(folders, key=order)


def read_job(job_dir: Path, sweep_dir: Path, output_subdir: str) -> JobRow:
    """A job folder as a row. Only outcome files written after the job started (its overrides) count."""
    overrides_file = job_dir / output_subdir / "overrides.yaml"
    overrides = [str(item) for item in OmegaConf.load(overrides_file)]
    job = job_dir.relative_to(sweep_dir).as_posix()
    started = overrides_file.stat().st_mtime

    def fresh(name: str) -> Path | None:
        path = job_dir / name
        return path if path.is_file() and path.stat().st_mtime >= started else None

    if error_file := fresh(ERROR_FILE):
        lines = error_file.read_text().splitlines()
        return JobRow(job, overrides, FAILED, error=lines[0] if lines else "failed without a message")
    if metrics_file := fresh(METRICS_FILE):
        try:
            metrics = json.loads(metrics_file.read_text())
            return JobRow(
                job,
                overrides,
                COMPLETED,
                backend=str(metrics["backend"]),
                val_auroc=float(metrics["val"]["auroc"]),
                test_auroc=float(metrics["test"]["auroc"]),
                fit_seconds=float(metrics["fit_seconds"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            return JobRow(job, overrides, FAILED, error=f"unreadable {METRICS_FILE}: {error_line(err)}")
    if parity_file := fresh(PARITY_FILE):  # experiment=parity: both backends, compared
        try:
            numbers = json.loads(parity_file.read_text())
            backends = [name for name, value in numbers.items() if isinstance(value, dict)]
            best = max(backends, key=lambda name: numbers[name]["val_auroc"])
            return JobRow(
                job,
                overrides,
                COMPLETED,
                backend="+".join(backends),
                val_auroc=float(numbers[best]["val_auroc"]),
                test_auroc=float(numbers[best]["test_auroc"]),
                fit_seconds=sum(float(numbers[name]["fit_seconds"]) for name in backends),
                parity=numbers,
            )
        except (ValueError, KeyError, TypeError) as err:
            return JobRow(job, overrides, FAILED, error=f"unreadable {PARITY_FILE}: {error_line(err)}")
    return JobRow(job, overrides, FAILED, error=f"did not finish (no {METRICS_FILE} or {ERROR_FILE})")


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
    experiment=parity jobs bring their own comparison."""
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


def write_csv(path: Path, rows: Iterable[JobRow]) -> None:
    """One line per job; numbers at full precision, empty where a failed job has none."""

    def cell(value: Any) -> str:
        return "" if value is None else str(value)

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for row in rows:
            record = {**vars(row), "overrides": " ".join(row.overrides)}
            writer.writerow([cell(record[name]) for name in CSV_FIELDS])


def write_markdown(path: Path, rows: list[JobRow], sweep_dir: Path, pairs: list[dict[str, Any]]) -> None:
    """A table for people: overrides shared by every job once above it, each job's own ones in it."""

    def number(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    def escape(text: str) -> str:
        return text.replace("|", "\\|")

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
    lines += [
        "",
        "| job | overrides | backend | val AUROC | test AUROC | fit s | status |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        status = f"{FAILED}: {escape(row.error)}" if row.status == FAILED else row.status
        overrides = escape(describe(row, keys))
        lines.append(
            f"| {row.job} | `{overrides}` | {row.backend} | {number(row.val_auroc, 4)} | "
            f"{number(row.test_auroc, 4)} | {number(row.fit_seconds, 3)} | {status} |"
        )
    if pairs:
        lines += [
            "",
            "## Backend parity (jobs that differ only in backend)",
            "",
            "| jobs | overrides | abs Δ test AUROC | weight cosine | test score Pearson | max abs Δ p |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {' / '.join(pair['jobs'])} | `{escape(pair['overrides'])}` | {pair['abs_delta_test_auroc']:.4f} "
            f"| {pair['weight_cosine']:.6f} | {pair['test_score_pearson']:.6f} "
            f"| {pair['max_abs_delta_probability']:.4f} |"
            for pair in pairs
        ]
    path.write_text("\n".join(lines) + "\n")


def log_scale(key: str, values: list[float]) -> bool:
    """Whether the key's axis is logarithmic: regularization always, else positive values over 2+ decades."""
    positive = [value for value in values if value > 0]
    if key.rsplit(".", 1)[-1] in LOG_SCALE_KEYS:
        return bool(positive)
    return len(positive) == len(values) > 0 and max(positive) / min(positive) > LOG_SCALE_SPAN


def plot_sweep(path: Path, rows: list[JobRow]) -> None:
    """Val (solid) and test (dashed) AUROC against each swept numeric key, one line per backend.

    When other keys were swept too, each point is the best job (by validation AUROC) at that value. With no
    numeric key swept (say, only backend=...), the AUROCs are plotted per job instead.
    """
    done = [row for row in rows if row.val_auroc is not None and row.test_auroc is not None]
    swept = swept_keys(rows)
    numeric = [key for key in swept if done and numeric_values(done, key) is not None]
    colors = {backend: f"C{i}" for i, backend in enumerate(sorted({row.backend for row in done}))}
    panels = max(len(numeric), 1)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], numeric, strict=False):
        plot_against(ax, key, done, colors)
        others = [other for other in swept if other not in (key, "backend")]  # backends are lines of their own
        ax.set_title(f"best over {', '.join(others)}" if others else "")
    if not numeric:
        plot_per_job(axes[0][0], done, colors)
    for ax in axes[0]:
        ax.set_ylabel("AUROC")
        if done:
            ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_against(ax: Any, key: str, done: list[JobRow], colors: dict[str, str]) -> None:
    """One panel: AUROC against the key's value, per backend the best job at each value."""
    for i, (backend, color) in enumerate(colors.items()):
        size = max(8 - 3 * i, 3)  # backends that agree draw on top of each other: keep the first one visible
        best_at: dict[float, JobRow] = {}
        for row in (row for row in done if row.backend == backend):
            x = float(row.settings[key])
            if x not in best_at or (row.val_auroc or 0.0) > (best_at[x].val_auroc or 0.0):
                best_at[x] = row
        xs = sorted(best_at)
        style = {"color": color, "markersize": size, "linewidth": size / 4}
        ax.plot(xs, [best_at[x].val_auroc for x in xs], "o-", label=f"{backend} val", **style)
        ax.plot(xs, [best_at[x].test_auroc for x in xs], "s--", label=f"{backend} test", **style)
    values = numeric_values(done, key) or []
    if log_scale(key, values):
        ax.set_xscale("log" if min(values) > 0 else "symlog")
    ax.set_xlabel(key)


def plot_per_job(ax: Any, done: list[JobRow], colors: dict[str, str]) -> None:
    """The fallback panel when no numeric key was swept: each job's AUROCs, coloured by backend."""
    for backend, color in colors.items():
        jobs = [row for row in done if row.backend == backend]
        names = [row.job for row in jobs]
        ax.plot(names, [row.val_auroc for row in jobs], "o", color=color, label=f"{backend} val")
        ax.plot(names, [row.test_auroc for row in jobs], "s", mfc="none", color=color, label=f"{backend} test")
    ax.set(xlabel="job", title="AUROC per job" if done else "no completed jobs")


def summary_lines(
    rows: list[JobRow], sweep_dir: Path, written: bool, pairs: list[dict[str, Any]] | None = None
) -> list[str]:
    """What the terminal shows at the end of a sweep: the counts, the best job, each failure, the files."""
    keys = swept_keys(rows)
    failed = [row for row in rows if row.status == FAILED]
    lines = [f"probe_lab: sweep of {len(rows)} jobs: {len(rows) - len(failed)} completed, {len(failed)} failed"]
    if best := best_job(rows):
        lines.append(
            f"  best     job {best.job} ({describe(best, keys)}): val AUROC {best.val_auroc:.4f}, "
            f"test AUROC {best.test_auroc:.4f}, {best.backend} backend, {sweep_dir / best.job}"
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


class SweepSummary(Callback):
    """Hydra callback (see hydra.callbacks in conf/config.yaml) that summarizes a multirun when it ends.

    It exits with status 1 when a job failed (or the summary could not be written), 0 otherwise. Hydra turns
    an exception from a callback into a warning, so this is done by raising SystemExit, which it lets through.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        output_subdir = config.hydra.output_subdir
        if output_subdir is None:
            print(
                "probe_lab: no sweep summary: it reads the overrides Hydra saves (hydra.output_subdir)", file=sys.stderr
            )
            return
        rows = [read_job(folder, sweep_dir, str(output_subdir)) for folder in job_folders(sweep_dir, output_subdir)]
        written = True
        pairs: list[dict[str, Any]] = []
        try:
            pairs = backend_pairs(rows, sweep_dir)
            write_summary(sweep_dir, rows, pairs)
        except Exception as err:  # the jobs' outcomes still get printed, and the exit status still tells
            print(f"probe_lab: error: could not write the sweep summary: {error_line(err)}", file=sys.stderr)
            written = False
        for line in summary_lines(rows, sweep_dir, written, pairs):
            print(line)
        sys.stdout.flush()
        if not written or any(row.status == FAILED for row in rows):
            raise SystemExit(1)


def write_summary(sweep_dir: Path, rows: list[JobRow], pairs: list[dict[str, Any]] | None = None) -> None:
    """summary.csv, summary.md and sweep.png into the sweep folder, and parity.json for backend pairs."""
    csv_name, md_name, png_name = SUMMARY_FILES
    write_csv(sweep_dir / csv_name, rows)
    write_markdown(sweep_dir / md_name, rows, sweep_dir, pairs or [])
    plot_sweep(sweep_dir / png_name, rows)
    if pairs:
        (sweep_dir / PARITY_FILE).write_text(json.dumps(pairs, indent=2) + "\n")
