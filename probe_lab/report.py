"""What a person looks at after a run: ROC curves as a picture and a summary in the terminal."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve


def plot_roc(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> None:
    """One ROC curve per named split: {name: (labels, scores, auroc)}."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name, (labels, scores, auroc) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_lines(backend: str, reason: str, metrics: dict, out_dir: Path, files: list[str]) -> list[str]:
    test = metrics.get("test") or {}
    dropped = metrics.get("dropped_nonfinite_rows")
    lines = [
        f"probe_lab: {backend} backend ({reason}) on {metrics['device']}, precision {metrics['precision']}",
        f"  data     {metrics['n_train']} train / {metrics['n_val']} val / {metrics['n_test']} test rows, "
        f"{metrics['input_dim']} dims" + (f"; {dropped} rows with NaN/Inf dropped" if dropped else ""),
        f"  fit      {metrics['fit_seconds']:.3f} s; val AUROC {metrics['val']['auroc']:.4f}",
    ]
    for point in metrics.get("regularization_path", []):
        chosen = "  ← chosen" if point["regularization"] == metrics["regularization"] else ""
        value, auroc = point["regularization"], point["val_auroc"]
        lines.append(f"  path     regularization {value:<9g} val AUROC {auroc:.4f}{chosen}")
    if test:
        lines.append(
            f"  test     AUROC {test['auroc']:.4f}  AP {test['ap']:.4f}  accuracy {test['accuracy']:.4f}  "
            f"recall@1%FPR {test['recall_at_1pct_fpr']:.4f}"
        )
    timings = metrics.get("timings") or {}
    if timings:
        stages = ", ".join(f"{name.removesuffix('_seconds')} {seconds:.2f} s" for name, seconds in timings.items())
        lines.append(f"  time     {stages}")
    lines.append(f"  outputs  {out_dir}: {', '.join(files)}")
    return lines
