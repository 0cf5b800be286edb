"""The files of a training run's folder beside metrics.json: the probe (probe.safetensors and
probe.json, with the thresholds probe_lab.predict applies), the test scores, the ROC curves and the
regularization path's plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from probe_lab.artifacts import write_json
from probe_lab.assessment import Evaluation
from probe_lab.backends.base import ProbeTrainer
from probe_lab.data.splits import Splits
from probe_lab.probe import FORMAT_VERSION, save_probe
from probe_lab.report.parity import TEST_SCORES
from probe_lab.report.plots import plot_regularization_path, plot_roc

ARTIFACTS = ["probe.safetensors", "probe.json", "metrics.json", "roc.png", TEST_SCORES]


def write_artifacts(
    staging: Path,
    trainer: ProbeTrainer,
    evaluation: Evaluation,
    splits: Splits,
    run_metrics: dict[str, Any],
    resolved_config: Any,
) -> None:
    """probe.safetensors, probe.json and roc.png into the staging folder (metrics.json comes last)."""
    assert trainer.weights is not None and splits.test is not None
    np.save(staging / TEST_SCORES, evaluation.test_proba.astype(np.float64))
    # What probe_lab.predict needs of each false-positive-rate threshold.
    thresholds = [
        {key: point[key] for key in ("target_fpr", "logit", "probability", "source")} for point in evaluation.thresholds
    ]
    save_probe(
        staging / "probe.safetensors",
        trainer.weights,
        {
            "backend": trainer.backend,
            "kind": run_metrics["kind"],
            "threshold": evaluation.threshold,
            "thresholds": thresholds,
            "layer": run_metrics["layer"],
            "layers": run_metrics["layers"],
        },
    )
    write_json(
        staging / "probe.json",
        {
            "format_version": FORMAT_VERSION,
            "input_dim": trainer.input_dim,
            "layer": run_metrics["layer"],
            "layers": run_metrics["layers"],
            "backend": trainer.backend,
            "kind": run_metrics["kind"],
            "threshold": evaluation.threshold,
            "thresholds": thresholds,
            "metrics": {"val": evaluation.val, "test": evaluation.test},
            "config": resolved_config,
        },
    )
    plot_roc(
        staging / "roc.png",
        {
            "validation": (splits.val.labels, evaluation.val_proba, evaluation.val["auroc"]),
            "test": (splits.test.labels, evaluation.test_proba, evaluation.test["auroc"]),
        },
        title=f"{trainer.backend} probe, {splits.train.name}"
        + (f", layer {run_metrics['layer']}" if run_metrics["layer"] is not None else ""),
        threshold=evaluation.threshold,
    )
    if "regularization_path" in run_metrics:
        plot_regularization_path(
            staging / "regularization_path.png",
            run_metrics["regularization_path"],
            run_metrics["regularization"],
            run_metrics["standardize"],
        )
