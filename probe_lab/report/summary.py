"""What the terminal shows when a run ends: the run's summary lines and a backend comparison
(printed by `probe_lab.report.run_log.print_summary`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probe_lab.report.parity import compared_backends
from probe_lab.settings.placement import size_text

SHOWN_CANDIDATES = 5  # lines of a long regularization path in the summary

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
    lines += path_lines(metrics)
    if metrics.get("kind", "logistic") != "logistic":
        lines.append(f"  kind     {metrics['kind']} (closed form from the training split's class statistics)")
    if test:
        lines.append(
            test_line(test, metrics.get("test_intervals")) + (" (per token)" if "test_per_sample" in metrics else "")
        )
    for point in metrics.get("thresholds", []):
        lines.append(
            f"  at FPR   {point['target_fpr']:g}: threshold {point['probability']:.4g} (logit {point['logit']:.4g}, on "
            f"{point['negatives']} {point['source']}{_few(point)}) → test recall {point['test_recall']:.4f}, "
            f"test FPR {point['test_fpr']:.4f}"
        )
    if "controls" in metrics:
        controls = metrics["controls"]
        lines.append(
            f"  controls shuffled-label probe test AUROC {controls['shuffled_labels']['test_auroc']:.4f}, random "
            f"direction {controls['random_direction']['test_auroc']:.4f}; selectivity {controls['selectivity']:+.4f}"
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


def path_lines(metrics: dict[str, Any]) -> list[str]:
    """The candidates of a choice, best first (the `SHOWN_CANDIDATES` best of a longer path), the chosen
    one marked; with cross-validation their mean ± std fold AUROC, and a line on what was cross-validated."""
    points = metrics.get("regularization_path", [])
    chosen = (metrics.get("regularization"), metrics.get("standardize"))

    def score(point: dict[str, Any]) -> float:
        return point["cv_auroc_mean"] if "cv_auroc_mean" in point else point["val_auroc"]

    lines = []
    for point in sorted(points, key=score, reverse=True)[:SHOWN_CANDIDATES]:
        scaling = point.get("standardize", chosen[1])
        mark = "  ← chosen" if (point["regularization"], scaling) == chosen else ""
        scaled = (" standardized" if scaling else " raw         ") if "standardize" in point else ""
        if "cv_auroc_mean" in point:
            shown = f"CV AUROC {point['cv_auroc_mean']:.4f} ± {point['cv_auroc_std']:.4f}"
        else:
            shown = f"val AUROC {point['val_auroc']:.4f}"
        lines.append(f"  path     regularization {point['regularization']:<10g}{scaled} {shown}{mark}")
    if len(points) > SHOWN_CANDIDATES:
        lines.append(
            f"  path     … the best {SHOWN_CANDIDATES} of {len(points)} candidates; all of them in metrics.json "
            "and regularization_path.png"
        )
    if "cross_validation" in metrics:
        cv = metrics["cross_validation"]
        grouped = ", samples kept whole" if cv["grouped"] else ""
        lines.append(
            f"  cv       {cv['folds']}-fold stratified over {cv['rows']} train+val rows{grouped}; the choice refit "
            "on all of them; val metrics from out-of-fold scores"
        )
    return lines


def test_line(test: dict[str, float], intervals: dict[str, Any] | None) -> str:
    """Test AUROC, AP, accuracy and recall at 1% FPR, with their bootstrap intervals when there are any."""

    def shown(key: str) -> str:
        if intervals is None or key not in intervals:
            return f"{test[key]:.4f}"
        return f"{test[key]:.4f} [{intervals[key]['low']:.4f}, {intervals[key]['high']:.4f}]"

    line = (
        f"  test     AUROC {shown('auroc')}  AP {shown('ap')}  accuracy {test['accuracy']:.4f}  "
        f"recall@1%FPR {shown('recall_at_1pct_fpr')}"
    )
    if intervals is not None:
        line += f"  ({intervals['confidence']:.0%} bootstrap intervals, {intervals['resamples']} resamples)"
    return line


def _few(point: dict[str, Any]) -> str:
    """A note when the negatives are too few to resolve the target rate."""
    return "; too few to resolve it: no false positive allowed" if point["target_fpr"] * point["negatives"] < 1 else ""


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
