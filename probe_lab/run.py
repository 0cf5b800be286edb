"""One training run, wired together: config → backend → data → fit → evaluate → artifacts.

This module and `__main__` are the only ones that see Hydra's DictConfig; everything below takes
plain dataclasses and datasets. Every file a run writes — the probe, its metrics and plot, and the
Lightning logs and checkpoint — is staged and published together only when the run succeeds.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from probe_lab import metrics as metrics_lib
from probe_lab.artifacts import staged_artifacts, write_json
from probe_lab.backends import backend_class
from probe_lab.backends.base import ProbeTrainer
from probe_lab.config import RunConfig
from probe_lab.data.sources import load_dataset
from probe_lab.data.splits import Splits, split_dataset
from probe_lab.errors import ProbeLabError
from probe_lab.parity import TEST_SCORES, BackendOutcome, compare, parity_lines, plot_parity
from probe_lab.probe import FORMAT_VERSION, ProbeWeights, save_probe
from probe_lab.report import plot_regularization_path, plot_roc, summary_lines
from probe_lab.resolver import BackendChoice, resolve_backend, resolve_device, resolve_precision
from probe_lab.settings import ProbeTrainingConfig

log = logging.getLogger(__name__)

ARTIFACTS = ["probe.safetensors", "probe.json", "metrics.json", "roc.png", TEST_SCORES]
LIGHTNING_ARTIFACTS = ["logs/metrics.csv", "checkpoints/"]


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    metrics: dict[str, Any]
    val_auroc: float  # of the exported probe; with experiment=parity, the better backend's


@dataclass(frozen=True)
class Evaluation:
    """Scores of the trained probe on the held-out splits, with the threshold picked on validation."""

    threshold: float
    val_proba: np.ndarray
    test_proba: np.ndarray
    val: dict[str, float]
    test: dict[str, float]


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
    if settings.data.test_split <= 0:
        raise ProbeLabError("data.test_split must be > 0 for a training run (test metrics need rows)")
    device = resolve_device(settings.device.name.value)
    config = ProbeTrainingConfig.from_settings(
        settings.probe,
        validation_split=settings.data.validation_split,
        device=device,
        precision=resolve_precision(settings.precision.name, device),
        seed=settings.seed,
        memory_budget_gb=settings.device.memory_budget_gb,
        num_workers=settings.data.num_workers,
        read_mb=settings.data.read_mb,
        shuffle_reads=settings.data.shuffle_reads,
        prefetch_batches=settings.data.prefetch_batches,
    )
    resolved_config = OmegaConf.to_container(cfg, resolve=True)

    choice = resolve_backend(settings.backend.name.value, settings.model.size_b, settings.backend.threshold_b)
    hold_on = None
    if choice.name == "pytorch" and not settings.parity:
        from probe_lab.backends.lightning import resident_device

        hold_on = functools.partial(resident_device, config)
    start = time.perf_counter()
    splits, dim, dropped = load_splits(settings, hold_on)
    read_seconds = time.perf_counter() - start
    data = DataFacts(settings.data.source.value, settings.data.layer, dim, dropped, settings.model.size_b)

    if settings.parity:
        return run_parity(config, splits, data, read_seconds, out_dir, resolved_config, settings.progress_bar)
    log.info("backend: %s (%s)", choice.name, choice.reason)
    with staged_artifacts(out_dir) as staging:
        run_metrics, files = train_backend(
            choice, config, splits, data, read_seconds, staging, resolved_config, settings.progress_bar
        )
    for line in summary_lines(choice.name, choice.reason, run_metrics, out_dir, files):
        print(line)
    return RunResult(out_dir, run_metrics, float(run_metrics["val"]["auroc"]))


@dataclass(frozen=True)
class DataFacts:
    """What metrics.json records about the data a probe was trained on."""

    source: str
    layer: int | None
    dim: int
    dropped_nonfinite_rows: int
    model_size_b: float


def train_backend(
    choice: BackendChoice,
    config: ProbeTrainingConfig,
    splits: Splits,
    data: DataFacts,
    read_seconds: float,
    folder: Path,
    resolved_config: Any,
    progress_bar: bool,
) -> tuple[dict[str, Any], list[str]]:
    """Fit one backend, evaluate it and write its files into `folder`; returns (metrics, file names)."""
    timings: dict[str, float] = {"read_seconds": read_seconds}
    trainer = backend_class(choice.name)(data.dim, config, run_dir=folder, progress_bar=progress_bar)
    start = time.perf_counter()
    splits = trainer.hold(splits)
    timings["load_seconds"] = time.perf_counter() - start
    trainer.fit_datasets(splits.train, splits.val)
    weights = trainer.weights
    if weights is None or trainer.fit_seconds is None:
        raise RuntimeError("the backend finished fit without a probe")
    timings["fit_seconds"] = trainer.fit_seconds

    start = time.perf_counter()
    evaluation = evaluate(weights, splits)
    timings["evaluate_seconds"] = time.perf_counter() - start

    run_metrics: dict[str, Any] = {
        "backend": choice.name,
        "backend_reason": choice.reason,
        "device": trainer.fit_details.get("device", "cpu"),
        "precision": trainer.fit_details.get("precision", "32"),
        "model_size_b": data.model_size_b,
        "data": data.source,
        "layer": data.layer,
        "dropped_nonfinite_rows": data.dropped_nonfinite_rows,
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test) if splits.test is not None else 0,
        "input_dim": data.dim,
        "fit_seconds": trainer.fit_seconds,
        "regularization": trainer.regularization,
        "fit": trainer.fit_details,
        "threshold": evaluation.threshold,
        "val": evaluation.val,
        "test": evaluation.test,
        "timings": timings,
    }
    if trainer.regularization_path:
        run_metrics["regularization_path"] = trainer.regularization_path
    start = time.perf_counter()
    write_artifacts(folder, trainer, evaluation, splits, run_metrics, resolved_config)
    timings["write_seconds"] = time.perf_counter() - start
    write_json(folder / "metrics.json", run_metrics)

    files = ARTIFACTS + (["regularization_path.png"] if trainer.regularization_path else [])
    files += LIGHTNING_ARTIFACTS if choice.name == "pytorch" else []
    return run_metrics, files


def run_parity(
    config: ProbeTrainingConfig,
    splits: Splits,
    data: DataFacts,
    read_seconds: float,
    out_dir: Path,
    resolved_config: Any,
    progress_bar: bool,
) -> RunResult:
    """Train both backends on the same splits, seed and regularization; each backend's run goes into
    its own subfolder, and parity.json / parity.png compare them."""
    with staged_artifacts(out_dir) as staging:
        outcomes = []
        for name in ("sklearn", "pytorch"):
            choice = BackendChoice(name, "experiment=parity trains both backends")
            (staging / name).mkdir()
            train_backend(choice, config, splits, data, read_seconds, staging / name, resolved_config, progress_bar)
            outcomes.append(BackendOutcome.from_run_folder(staging / name))
        numbers = compare(*outcomes)
        write_json(staging / "parity.json", numbers)
        plot_parity(staging / "parity.png", *outcomes)
    print(f"probe_lab: parity of the sklearn and pytorch backends, {len(splits.train)} train rows, {data.dim} dims")
    for line in parity_lines(numbers):
        print(line)
    print(f"  outputs  {out_dir}: parity.json, parity.png, sklearn/, pytorch/")
    return RunResult(out_dir, {"parity": numbers}, max(outcome.val_auroc for outcome in outcomes))


def load_splits(
    settings: RunConfig, hold_on: Callable[[int], torch.device | None] | None = None
) -> tuple[Splits, int, int]:
    """The configured data, checked (width, finiteness) and split by index.

    hold_on: where the backend will hold data of a given size (see `load_dataset`).
    Returns (splits, input width, rows dropped for holding NaN/Inf with data.drop_nonfinite=true).
    """
    dataset = load_dataset(settings.data, settings.seed, progress=settings.progress_bar, hold_on=hold_on)
    if settings.model.hidden_dim is not None and settings.model.hidden_dim != dataset.dim:
        raise ProbeLabError(f"model.hidden_dim={settings.model.hidden_dim} but {dataset.name} has {dataset.dim} dims")
    dropped = 0
    if settings.data.drop_nonfinite:
        dataset, dropped = dataset.drop_nonfinite()
        if dropped:
            log.warning("%s: dropped %d of %d rows holding NaN or Inf", dataset.name, dropped, dropped + len(dataset))
    dataset.check_finite()
    splits = split_dataset(dataset, settings.data.validation_split, settings.data.test_split, settings.seed)
    if dataset.device.type != "cpu":  # each split gets a tensor of its own; the whole one is freed
        held = [
            part.on_device(dataset.device) if part is not None else None
            for part in (splits.train, splits.val, splits.test)
        ]
        splits = Splits(*held)
    return splits, dataset.dim, dropped


def evaluate(weights: ProbeWeights, splits: Splits) -> Evaluation:
    if splits.test is None:
        raise ValueError("evaluate needs a test split")
    val_proba = weights.predict_proba(splits.val)
    test_proba = weights.predict_proba(splits.test)
    threshold = metrics_lib.pick_threshold(splits.val.labels, val_proba)
    return Evaluation(
        threshold=threshold,
        val_proba=val_proba,
        test_proba=test_proba,
        val=metrics_lib.evaluate(splits.val.labels, val_proba, threshold, with_recall=False),
        test=metrics_lib.evaluate(splits.test.labels, test_proba, threshold),
    )


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
    save_probe(
        staging / "probe.safetensors",
        trainer.weights,
        {"backend": trainer.backend, "threshold": evaluation.threshold},
    )
    write_json(
        staging / "probe.json",
        {
            "format_version": FORMAT_VERSION,
            "input_dim": trainer.input_dim,
            "layer": run_metrics["layer"],
            "backend": trainer.backend,
            "threshold": evaluation.threshold,
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
        title=f"{trainer.backend} probe, {splits.train.name}",
    )
    if "regularization_path" in run_metrics:
        plot_regularization_path(
            staging / "regularization_path.png", run_metrics["regularization_path"], run_metrics["regularization"]
        )
