"""What the terminal shows when a run ends: the run's summary lines and a backend comparison
(printed by `probe_lab.report.run_log.print_summary`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probe_lab.report.parity import compared_backends
from probe_lab.settings.placement import size_text

# Where a pytorch fit's training split lives, in words (`probe_lab.settings.placement.DataHome`).
HOMES = {
    "resident": "held on the device",
    "host": "in pinned host memory, copied to the GPU at each evaluation",
    "streamed": "read from storage at each pass",
}


def run_summary_lines(backend: str, reason: str, metrics: dict[str, Any], out_dir: Path, files: list[str]) -> list[str]:
    """A training run in a few lines: backend and device, data, fit, regularization path, test metrics,
    time per stage and the files written (`metrics` is the run's metrics.json)."""
    test = metrics.get("test") or {}
    dropped = metrics.get("dropped_nonfinite_rows")
    lines = [
        f"probe_lab: {backend} backend ({reason}) on {metrics['device']}, precision {metrics['precision']}",
        f"  data     {metrics['n_train']} train / {metrics['n_val']} val / {metrics['n_test']} test rows, "
        f"{metrics['input_dim']} dims" + (f"; {dropped} rows with NaN/Inf dropped" if dropped else ""),
        f"  fit      {metrics['fit_seconds']:.3f} s; val AUROC {metrics['val']['auroc']:.4f}",
    ]
    placement = metrics.get("placement")
    if backend == "pytorch" and placement:
        lines.insert(
            2,
            f"  place    {placement['optimizer']}, training split {size_text(placement['train_gb'] * 1e9)} "
            + _per_process(placement)
            + f"{placement['train']} ({HOMES[placement['train']]})"
            + _kept_on_device(placement),
        )
    for point in metrics.get("regularization_path", []):
        chosen = "  ← chosen" if point["regularization"] == metrics["regularization"] else ""
        value, auroc = point["regularization"], point["val_auroc"]
        lines.append(f"  path     regularization {value:<9g} val AUROC {auroc:.4f}{chosen}")
    if test:
        lines.append(
            f"  test     AUROC {test['auroc']:.4f}  AP {test['ap']:.4f}  accuracy {test['accuracy']:.4f}  "
            f"recall@1%FPR {test['recall_at_1pct_fpr']:.4f}" + (" (per token)" if "test_per_sample" in metrics else "")
        )
    if "test_per_sample" in metrics:
        by_sample = metrics["test_per_sample"]
        lines.append(
            f"  samples  {by_sample['samples']} test samples: AUROC {by_sample['max']['auroc']:.4f} by their "
            f"highest token score, {by_sample['mean']['auroc']:.4f} by their mean"
        )
    timings = metrics.get("timings") or {}
    if timings:
        stages = ", ".join(f"{name.removesuffix('_seconds')} {seconds:.2f} s" for name, seconds in timings.items())
        lines.append(f"  time     {stages}")
    lines.append(f"  outputs  {out_dir}: {', '.join(files)}")
    return lines


def parity_run_lines(numbers: dict[str, Any], n_train: int, dim: int, out_dir: Path) -> list[str]:
    """An experiment=parity run: what was compared, the comparison (`compare`'s numbers), the files written."""
    return [
        f"probe_lab: parity of the sklearn and pytorch backends, {n_train} train rows, {dim} dims",
        *parity_lines(numbers),
        f"  outputs  {out_dir}: parity.json, parity.png, sklearn/, pytorch/",
    ]


def parity_lines(numbers: dict[str, Any]) -> list[str]:
    """A comparison from `compare` in a few lines: each backend's numbers, then how far apart they are."""
    lines = [
        f"  {name:<8} val AUROC {numbers[name]['val_auroc']:.4f}  test AUROC {numbers[name]['test_auroc']:.4f}  "
        f"fit {numbers[name]['fit_seconds']:.3f} s"
        for name in compared_backends(numbers)
    ]
    lines.append(
        f"  parity   |Δ test AUROC| {numbers['abs_delta_test_auroc']:.4f}  weight cosine "
        f"{numbers['weight_cosine']:.6f}  test score Pearson {numbers['test_score_pearson']:.6f}  "
        f"max |Δ p| {numbers['max_abs_delta_probability']:.4f}"
    )
    return lines


def _per_process(placement: dict[str, Any]) -> str:
    """A data-parallel fit's sizes are one process's shard."""
    processes = placement.get("processes", 1)
    return f"per process × {processes} processes, " if processes > 1 else ""


def _kept_on_device(placement: dict[str, Any]) -> str:
    """How much of a training split that is not resident stays on the GPU, when any does."""
    kept = placement.get("train_on_device_gb", 0) if placement["train"] != "resident" else 0
    return f"; {size_text(kept * 1e9)} of it kept on the device" if kept else ""
