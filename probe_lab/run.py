"""One training run, wired together: config → backend → data → fit → evaluate → artifacts.

This module and `__main__` are the only ones that see Hydra's DictConfig; everything below takes
plain dataclasses and datasets.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from probe_lab import metrics as metrics_lib
from probe_lab.artifacts import staged_artifacts, write_json
from probe_lab.backends import backend_class
from probe_lab.backends.base import ProbeTrainer
from probe_lab.config import RunConfig
from probe_lab.data.sources import load_dataset
from probe_lab.data.splits import split_dataset
from probe_lab.errors import ProbeLabError
from probe_lab.probe import FORMAT_VERSION, save_probe
from probe_lab.report import plot_roc, summary_lines
from probe_lab.resolver import resolve_backend, resolve_device, resolve_precision
from probe_lab.settings import ProbeTrainingConfig

log = logging.getLogger(__name__)

ARTIFACTS = ["probe.safetensors", "probe.json", "metrics.json", "roc.png"]


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    metrics: dict[str, Any]


def to_settings(cfg: DictConfig, schema: type) -> Any:
    """The composed config as its dataclass (running each `__post_init__` check), or a one-line error."""
    try:
        settings = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        message = str(err).strip().splitlines()[0]
        raise ProbeLabError(f"invalid setting{f' {key}' if key else ''}: {message}") from None
    if not isinstance(settings, schema):
        raise ProbeLabError(f"the composed config is not a {schema.__name__}")
    return settings


def run(cfg: DictConfig, out_dir: Path) -> RunResult:
    settings: RunConfig = to_settings(cfg, RunConfig)
    choice = resolve_backend(settings.backend.name.value, settings.model.size_b, settings.backend.threshold_b)
    log.info("backend: %s (%s)", choice.name, choice.reason)
    device = resolve_device(settings.device.name.value)
    precision = resolve_precision(settings.precision.name, device)

    timings: dict[str, float] = {}
    start = time.perf_counter()
    dataset = load_dataset(settings.data, settings.seed)
    if settings.model.hidden_dim is not None and settings.model.hidden_dim != dataset.dim:
        raise ProbeLabError(f"model.hidden_dim={settings.model.hidden_dim} but {dataset.name} has {dataset.dim} dims")
    dataset.check_finite()
    splits = split_dataset(dataset, settings.data.validation_split, settings.data.test_split, settings.seed)
    timings["read_seconds"] = time.perf_counter() - start

    config = ProbeTrainingConfig.from_settings(
        settings.probe,
        validation_split=settings.data.validation_split,
        device=device,
        precision=precision,
        seed=settings.seed,
    )
    trainer_class = backend_class(choice.name)
    trainer: ProbeTrainer = (
        trainer_class(dataset.dim, config, run_dir=out_dir, progress_bar=settings.progress_bar)  # type: ignore[call-arg]
        if choice.name == "pytorch"
        else trainer_class(dataset.dim, config)
    )
    trainer.fit_datasets(splits.train, splits.val)
    assert trainer.weights is not None and splits.test is not None and trainer.fit_seconds is not None

    start = time.perf_counter()
    val_proba = trainer.weights.predict_proba(splits.val)
    test_proba = trainer.weights.predict_proba(splits.test)
    threshold = metrics_lib.pick_threshold(splits.val.labels, val_proba)
    val_metrics = metrics_lib.evaluate(splits.val.labels, val_proba, threshold, with_recall=False)
    test_metrics = metrics_lib.evaluate(splits.test.labels, test_proba, threshold)
    timings["evaluate_seconds"] = time.perf_counter() - start
    timings["fit_seconds"] = trainer.fit_seconds

    run_metrics: dict[str, Any] = {
        "backend": choice.name,
        "backend_reason": choice.reason,
        "device": trainer.fit_details.get("device", "cpu"),
        "precision": trainer.fit_details.get("precision", "32"),
        "model_size_b": settings.model.size_b,
        "data": settings.data.source.value,
        "layer": settings.data.layer,
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "input_dim": dataset.dim,
        "fit_seconds": trainer.fit_seconds,
        "fit": trainer.fit_details,
        "threshold": threshold,
        "val": val_metrics,
        "test": test_metrics,
        "timings": timings,
    }
    resolved = OmegaConf.to_container(cfg, resolve=True)
    start = time.perf_counter()
    with staged_artifacts(out_dir) as staging:
        save_probe(staging / "probe.safetensors", trainer.weights, {"backend": choice.name, "threshold": threshold})
        write_json(
            staging / "probe.json",
            {
                "format_version": FORMAT_VERSION,
                "input_dim": dataset.dim,
                "layer": settings.data.layer,
                "backend": choice.name,
                "threshold": threshold,
                "metrics": {"val": val_metrics, "test": test_metrics},
                "config": resolved,
            },
        )
        plot_roc(
            staging / "roc.png",
            {
                "validation": (splits.val.labels, val_proba, val_metrics["auroc"]),
                "test": (splits.test.labels, test_proba, test_metrics["auroc"]),
            },
            title=f"{choice.name} probe, {dataset.name}",
        )
        timings["write_seconds"] = time.perf_counter() - start
        write_json(staging / "metrics.json", run_metrics)

    files = ARTIFACTS + (["logs/metrics.csv", "checkpoints/"] if choice.name == "pytorch" else [])
    for line in summary_lines(choice.name, choice.reason, run_metrics, out_dir, files):
        print(line)
    return RunResult(out_dir, run_metrics)
