"""Every picture probe_lab draws, each written as a PNG file: ROC curves (linear and log false positive rate),
the regularization path, backend parity and a sweep's AUROCs (failed jobs marked).

The one module that imports matplotlib; it selects the Agg backend (files only, never a display) on import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve

from probe_lab.metrics import LOW_FPR, recall_at_fpr
from probe_lab.report.sweep.collect import numeric_values, swept_keys
from probe_lab.report.sweep.job import FAILED

if TYPE_CHECKING:
    from collections.abc import Iterable

    from matplotlib.figure import Figure

    from probe_lab.report.parity import BackendOutcome
    from probe_lab.report.sweep.job import JobRow

LOG_SCALE_KEYS = {"regularization"}  # last part of a key that is always plotted on a log axis
LOG_SCALE_SPAN = 100.0  # ... as is any key whose positive values span more than two decades
THRESHOLD_MARKER = {"marker": "o", "markersize": 8, "markerfacecolor": "white", "markeredgewidth": 2}
FAILED_MARKER = {"marker": "x", "markersize": 9, "markeredgewidth": 2, "color": "red", "linestyle": "none"}
FAILED_MARKER_HEIGHT = 0.05  # failed jobs are marked this far up from the bottom of the axes (a fraction) ...
FAILED_STRIP = 0.15  # ... in a strip below the AUROCs this tall (a fraction of their range)


def save_figure(fig: Figure, path: Path) -> None:
    """Lay the figure out, write it to `path` and close it."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_roc(
    path: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]],
    title: str,
    *,
    threshold: float | None = None,
) -> None:
    """The ROC curves (see `roc_figure`) as a PNG file."""
    save_figure(roc_figure(curves, title, threshold=threshold), path)


def roc_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str, *, threshold: float | None = None
) -> Figure:
    """One ROC curve per named split, {name: (labels, scores, auroc)}, in two panels under the title: linear
    axes (AUROC per split in the legend), and the false positive rate on a log axis, where the line at
    `LOW_FPR` and each split's recall there (`metrics.recall_at_fpr`) are shown. The caller closes the figure.

    Labels are 0/1 and scores probabilities. With a `threshold` (a probability; 1 is predicted when the score
    is >= it), each curve's operating point at that threshold is marked in both panels.
    """
    fig, (linear, log) = plt.subplots(1, 2, figsize=(11, 5.6), dpi=100)
    fig.suptitle(title)
    left = log_fpr_start(labels for labels, _, _ in curves.values())
    chance = np.logspace(np.log10(left), 0, 100)
    linear.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    log.plot(chance, chance, color="grey", linestyle=":", linewidth=1)
    log.axvline(LOW_FPR, color="grey", linestyle="--", linewidth=1)
    for i, (name, (labels, scores, auroc)) in enumerate(curves.items()):
        color = f"C{i}"
        fpr, tpr, _ = roc_curve(labels, scores)
        linear.plot(fpr, tpr, color=color, label=f"{name} (AUROC {auroc:.4f})")
        recall = recall_at_fpr(labels, scores, LOW_FPR)
        log.plot(np.maximum(fpr, left), tpr, color=color, label=f"{name}: recall {recall:.3f} at {LOW_FPR:.0%} FPR")
        log.plot([LOW_FPR], [recall], marker="s", markersize=5, color=color, clip_on=False)
        if threshold is not None:
            point_fpr, point_tpr = operating_point(labels, scores, threshold)
            for ax, x in ((linear, point_fpr), (log, max(point_fpr, left))):
                ax.plot([x], [point_tpr], **THRESHOLD_MARKER, markeredgecolor=color, zorder=3, clip_on=False)
    linear.set(xlabel="false positive rate", xlim=(0, 1), title="linear")
    log.set(xscale="log", xlabel="false positive rate (log; 0 drawn at the left edge)", xlim=(left, 1))
    log.set_title(f"log false positive rate; dashed: {LOW_FPR:.0%} FPR")
    marker_entry = [] if threshold is None else [threshold_legend_entry(threshold)]
    for ax in (linear, log):
        ax.set(ylabel="true positive rate", ylim=(0, 1.01))
        ax.grid(True, which="major", color="0.9", linewidth=0.8)
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + marker_entry, loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize="small")
    return fig


def log_fpr_start(all_labels: Iterable[np.ndarray]) -> float:
    """Where the log FPR axis starts: at 1e-3, or lower, at half the smallest non-zero false positive rate of
    any split (one negative of the split with the most), so that every split's first step is on the axis."""
    negatives = max((int(np.sum(np.asarray(labels) == 0)) for labels in all_labels), default=1)
    return min(1e-3, 0.5 / max(negatives, 1))


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false positive rate, true positive rate) when 1 is predicted for scores >= threshold."""
    labels, predicted = np.asarray(labels) == 1, np.asarray(scores) >= threshold
    return float(np.mean(predicted[~labels])), float(np.mean(predicted[labels]))


def threshold_legend_entry(threshold: float) -> Line2D:
    """The legend's entry for the threshold markers: drawn in black (each curve's marker is in its colour)."""
    return Line2D(
        [], [], linestyle="none", **THRESHOLD_MARKER, markeredgecolor="black", label=f"at threshold {threshold:.3g}"
    )


def plot_regularization_path(
    path: Path, points: list[dict[str, Any]], best: float, best_standardize: bool | None = None
) -> None:
    """AUROC against regularization (log axis), the chosen value marked: validation AUROC, or with
    cross-validation the mean fold AUROC with ± one standard deviation error bars; one line per
    feature scaling when standardize=auto tried both."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    scalings = sorted({p.get("standardize") for p in points}, key=lambda scaling: bool(scaling))
    for number, scaling in enumerate(scalings):
        mine = sorted((p for p in points if p.get("standardize") == scaling), key=lambda p: p["regularization"])
        nudge = 10 ** (0.05 * number)  # the second scaling's error bars a little to the right of the first's
        values = [p["regularization"] * nudge for p in mine]
        name = "" if scaling is None else (" (standardized)" if scaling else " (raw)")
        if "cv_auroc_mean" in mine[0]:
            means, stds = [p["cv_auroc_mean"] for p in mine], [p["cv_auroc_std"] for p in mine]
            folds = len(mine[0]["fold_aurocs"])
            ax.errorbar(values, means, yerr=stds, marker="o", capsize=3, label=f"{folds}-fold CV AUROC ± std{name}")
        else:
            ax.plot(values, [p["val_auroc"] for p in mine], marker="o", label=f"validation AUROC{name}")
    chosen = f"chosen: {best:g}" + (
        "" if best_standardize is None or len(scalings) < 2 else (", standardized" if best_standardize else ", raw")
    )
    ax.axvline(best, color="grey", linestyle=":", label=chosen)
    ax.set(xscale="log", xlabel="regularization (sklearn's 1/C)", ylabel="AUROC", title="regularization path")
    ax.legend(loc="best")
    save_figure(fig, path)


def plot_layers(path: Path, rows: list[dict[str, Any]], best: int) -> None:
    """Validation and test AUROC by layer (data.layer=all), the best layer by validation marked."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    layers = [row["layer"] for row in rows]
    ax.plot(layers, [row["val_auroc"] for row in rows], marker="o", label="validation AUROC")
    ax.plot(layers, [row["test_auroc"] for row in rows], marker="s", label="test AUROC")
    ax.axvline(best, color="grey", linestyle=":", label=f"best on validation: layer {best}")
    ax.set(xlabel="layer (index into the data's layer axis)", ylabel="AUROC", title="AUROC by layer")
    ax.legend(loc="best")
    save_figure(fig, path)


def plot_parity(path: Path, a: BackendOutcome, b: BackendOutcome) -> None:
    """The backends' test probabilities against each other (see `parity_figure`) as a PNG file."""
    save_figure(parity_figure(a, b), path)


def parity_figure(a: BackendOutcome, b: BackendOutcome) -> Figure:
    """Test probabilities of one backend against the other, with the y = x line where they agree; the caller
    closes the figure."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(a.test_proba, b.test_proba, s=6, alpha=0.5, label="test rows")
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8, label="y = x (agreement)", zorder=3)
    ax.set(
        xlabel=f"{a.backend} test probability",
        ylabel=f"{b.backend} test probability",
        title=f"parity: max |Δ p| {np.max(np.abs(a.test_proba - b.test_proba)):.4f}",
        xlim=(0, 1),
        ylim=(0, 1),
        aspect="equal",
    )
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_sweep(path: Path, rows: list[JobRow]) -> None:
    """A sweep's AUROCs (see `sweep_figure`) as a PNG file."""
    save_figure(sweep_figure(rows), path)


def sweep_figure(rows: list[JobRow]) -> Figure:
    """Val (solid) and test (dashed) AUROC against each swept numeric key, one panel per key and one line
    per backend, failed jobs marked with a red x at the bottom of each panel; the caller closes the figure.

    When other keys were swept too, each point is the best job (by validation AUROC) at that value. With no
    numeric key swept (say, only backend=...), the AUROCs are plotted per job instead. A failed job is marked
    at its value of the panel's key, and left out of a panel where that value is missing or not a number.
    """
    done = [row for row in rows if row.val_auroc is not None and row.test_auroc is not None]
    failed = [row for row in rows if row.status == FAILED]
    swept = swept_keys(rows)
    numeric = [key for key in swept if done and numeric_values(done, key) is not None]
    colors = {backend: f"C{i}" for i, backend in enumerate(sorted({row.backend for row in done}))}
    panels = max(len(numeric), 1)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], numeric, strict=False):
        plot_against(ax, key, done, failed, colors)
        others = [other for other in swept if other not in (key, "backend")]  # backends are lines of their own
        ax.set_title(f"best over {', '.join(others)}" if others else "")
    if not numeric:
        plot_per_job(axes[0][0], done, failed, colors)
    for ax in axes[0]:
        ax.set_ylabel("AUROC")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    return fig


def plot_against(ax: Any, key: str, done: list[JobRow], failed: list[JobRow], colors: dict[str, str]) -> None:
    """One panel: AUROC against the key's value, per backend the best job at each value; failed jobs marked."""
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
    placed = [row for row in failed if numeric_values([row], key) is not None]
    mark_failed(ax, numeric_values(placed, key) or [])
    values = numeric_values(done + placed, key) or []
    if log_scale(key, values):
        ax.set_xscale("log" if min(values) > 0 else "symlog")
    ax.set_xlabel(key)


def plot_per_job(ax: Any, done: list[JobRow], failed: list[JobRow], colors: dict[str, str]) -> None:
    """The fallback panel when no numeric key was swept: each job's AUROCs, coloured by backend, and the
    failed jobs marked."""
    for backend, color in colors.items():
        jobs = [row for row in done if row.backend == backend]
        names = [row.job for row in jobs]
        ax.plot(names, [row.val_auroc for row in jobs], "o", color=color, label=f"{backend} val")
        ax.plot(names, [row.test_auroc for row in jobs], "s", mfc="none", color=color, label=f"{backend} test")
    mark_failed(ax, [row.job for row in failed])
    ax.set(xlabel="job", title="AUROC per job" if done else "no completed jobs")


def mark_failed(ax: Any, xs: list[float] | list[str]) -> None:
    """A red x per failed job at its x, near the bottom of the axes whatever the AUROC range, labelled
    "failed (n)"; nothing when there are none.

    Call it after the AUROCs are drawn: below them the y axis gets a shaded strip (`FAILED_STRIP` of their
    range, without AUROC ticks) that holds the markers, so that none reads as an AUROC or hides one. With no
    AUROCs drawn, the y axis has no ticks.
    """
    if not xs:
        return
    if ax.has_data():
        bottom, top = ax.get_ylim()
        ticks = [tick for tick in ax.get_yticks() if bottom <= tick <= top]
        strip_bottom = bottom - FAILED_STRIP * (top - bottom)
        ax.set_ylim(strip_bottom, top)
        ax.set_yticks(ticks)
        ax.axhspan(strip_bottom, bottom, color="0.94", zorder=0)
    else:
        ax.set_yticks([])
    heights = [FAILED_MARKER_HEIGHT] * len(xs)  # in axes coordinates (x stays in data coordinates)
    style = {**FAILED_MARKER, "transform": ax.get_xaxis_transform(), "clip_on": False}
    ax.plot(xs, heights, **style, label=f"failed ({len(xs)})")


def log_scale(key: str, values: list[float]) -> bool:
    """Whether the key's axis is logarithmic: regularization always, else positive values over 2+ decades."""
    positive = [value for value in values if value > 0]
    if key.rsplit(".", 1)[-1] in LOG_SCALE_KEYS:
        return bool(positive)
    return len(positive) == len(values) > 0 and max(positive) / min(positive) > LOG_SCALE_SPAN


def plot_transfer(path: Path, names: list[str], auroc: list[list[float]]) -> None:
    """A transfer matrix as a heat map: `auroc[i][j]` is the test AUROC of the probe trained on `names[i]`
    (rows, "trained on") scored on the test split of `names[j]` (columns, "tested on"), each cell
    annotated, the diagonal (each probe on its own dataset) outlined; colours run from 0 to 1, white at
    chance (0.5), with a colour bar."""
    values = np.asarray(auroc, dtype=float)
    count = len(names)
    side = min(3.0 + 0.9 * count, 24.0)
    font = 10 if count <= 8 else max(5.0, 80.0 / count)
    fig, ax = plt.subplots(figsize=(side + 1.5, side), dpi=100)
    image = ax.imshow(values, cmap="RdBu", vmin=0.0, vmax=1.0)
    for i in range(count):
        for j in range(count):
            value = values[i, j]
            color = "white" if abs(value - 0.5) > 0.3 else "black"
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color=color, fontsize=font)
        ax.add_patch(plt.Rectangle((i - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="black", linewidth=2.5))
    long_names = max((len(name) for name in names), default=0) > 6
    ax.set_xticks(range(count), names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(range(count), names)
    ax.set(xlabel="tested on", ylabel="trained on", title="probe transfer: test AUROC (outlined: own dataset)")
    fig.colorbar(image, ax=ax, label="test AUROC (0.5: chance)")
    save_figure(fig, path)
