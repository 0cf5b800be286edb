"""Every picture probe_lab draws, each written as a PNG file: ROC curves, the regularization path, backend
parity and a sweep's AUROCs.

The one module that imports matplotlib; it selects the Agg backend (files only, never a display) on import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from probe_lab.report.sweep.collect import numeric_values, swept_keys

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from probe_lab.report.parity import BackendOutcome
    from probe_lab.report.sweep.job import JobRow

LOG_SCALE_KEYS = {"regularization"}  # last part of a key that is always plotted on a log axis
LOG_SCALE_SPAN = 100.0  # ... as is any key whose positive values span more than two decades


def save_figure(fig: Figure, path: Path) -> None:
    """Lay the figure out, write it to `path` and close it."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_roc(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> None:
    """One ROC curve per named split: {name: (labels, scores, auroc)}."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name, (labels, scores, auroc) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    save_figure(fig, path)


def plot_regularization_path(path: Path, points: list[dict[str, float]], best: float) -> None:
    """Validation AUROC against regularization (log axis), the chosen value marked."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    values = [p["regularization"] for p in points]
    aurocs = [p["val_auroc"] for p in points]
    order = np.argsort(values)
    ax.plot(np.asarray(values)[order], np.asarray(aurocs)[order], marker="o", label="validation AUROC")
    ax.axvline(best, color="grey", linestyle=":", label=f"chosen: {best:g}")
    ax.set(xscale="log", xlabel="regularization (sklearn's 1/C)", ylabel="AUROC", title="regularization path")
    ax.legend(loc="best")
    save_figure(fig, path)


def plot_parity(path: Path, a: BackendOutcome, b: BackendOutcome) -> None:
    """Test probabilities of one backend against the other; agreement lies on the diagonal."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(a.test_proba, b.test_proba, s=6, alpha=0.5)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(
        xlabel=f"{a.backend} test probability",
        ylabel=f"{b.backend} test probability",
        title=f"parity: max |Δ p| {np.max(np.abs(a.test_proba - b.test_proba)):.4f}",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    save_figure(fig, path)


def plot_sweep(path: Path, rows: list[JobRow]) -> None:
    """A sweep's AUROCs (see `sweep_figure`) as a PNG file."""
    save_figure(sweep_figure(rows), path)


def sweep_figure(rows: list[JobRow]) -> Figure:
    """Val (solid) and test (dashed) AUROC against each swept numeric key, one panel per key and one line
    per backend; the caller closes the figure.

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
    return fig


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


def log_scale(key: str, values: list[float]) -> bool:
    """Whether the key's axis is logarithmic: regularization always, else positive values over 2+ decades."""
    positive = [value for value in values if value > 0]
    if key.rsplit(".", 1)[-1] in LOG_SCALE_KEYS:
        return bool(positive)
    return len(positive) == len(values) > 0 and max(positive) / min(positive) > LOG_SCALE_SPAN
