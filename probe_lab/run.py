"""One training run, wired together: config → backend → data → fit → evaluate → artifacts.

This module and `__main__` are the only ones that see Hydra's DictConfig; everything below takes
plain dataclasses and datasets. Every file a run writes — the probe, its metrics and plot, and the
Lightning logs and checkpoint — is staged and published together only when the run succeeds.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from probe_lab.artifacts import RESUME, staged_artifacts, write_json
from probe_lab.assessment import assess, control_probes, load_control
from probe_lab.backends import backend_class
from probe_lab.backends.base import ProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.sources import Source, open_source
from probe_lab.data.splits import Splits, hold_splits, split_dataset
from probe_lab.errors import ProbeLabError
from probe_lab.report.parity import BackendOutcome, compare
from probe_lab.report.plots import plot_parity
from probe_lab.report.run_files import ARTIFACTS, write_artifacts
from probe_lab.report.run_log import RUN_LOG, print_summary
from probe_lab.report.summary import parity_run_lines, run_summary_lines
from probe_lab.report.sweep.job import JOB_ID_KEY
from probe_lab.resuming import run_staging
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.settings.backend import BackendChoice, resolve_backend
from probe_lab.settings.data import LAYER_ALL
from probe_lab.settings.evaluation import EvalSettings
from probe_lab.settings.ignored import ignored_trainer_flags
from probe_lab.settings.parallel import ONE_PROCESS, Processes, follower_process, launched_processes
from probe_lab.settings.placement import Placement, decide_placement
from probe_lab.settings.schema import ModelConfig, RunConfig, to_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    metrics: dict[str, Any]
    val_auroc: float  # of the exported probe; with experiment=parity, the better backend's


def run(
    cfg: DictConfig,
    out_dir: Path,
    job_id: str | None = None,
    settings: RunConfig | None = None,
    source: Source | None = None,
) -> RunResult:
    """Train (or, with experiment=parity, compare) as `cfg` says, into `out_dir`. job_id: a multirun
    job's id, recorded in metrics.json / parity.json so that the sweep summary knows them for its own.
    settings: `cfg` already checked as a RunConfig (`to_settings`), when the caller has it. source:
    the data `settings.data` describes, already read (one layer of a `data.layer=all` run)."""
    settings = settings or to_settings(cfg, RunConfig)
    if settings.data.layer == LAYER_ALL:
        from probe_lab.layers import run_every_layer

        return run_every_layer(cfg, out_dir, job_id, settings)
    choice, processes = check_runnable(settings, job_id)
    config = training_config(settings)
    resolved_config = OmegaConf.to_container(cfg, resolve=True)

    RUN_LOG.info("backend  %s", "sklearn and pytorch (experiment=parity)" if settings.parity else choice.name)
    if not settings.parity and (ignored := ignored_trainer_flags(settings.trainer, choice.name)):
        log.warning(ignored)
    start = time.perf_counter()
    source = source or open_source(settings.data, settings.seed, progress=settings.progress_bar)
    check_width(settings.model, source)
    layer = "" if settings.data.layer is None else f", layer {settings.data.layer}"
    RUN_LOG.info(
        "data     %s: %d rows, %d dims, %s%s",
        source.name,
        source.rows,
        source.dim,
        str(source.dtype).removeprefix("torch."),
        layer,
    )
    sizes = source.split_bytes(settings.data.validation_split, settings.data.test_split)
    # Parity loads the data as the pytorch backend would; sklearn reads it from wherever it is held.
    backend = "pytorch" if settings.parity else choice.name
    placement = decide_placement(config, sizes, backend=backend, processes=processes)
    RUN_LOG.info("placement %s", placement.describe())
    splits, dropped = load_splits(settings, source, placement)
    loaded = time.perf_counter()
    if placement.splits_on_device:
        splits = hold_splits(splits, placement.device)
    timings = {"read_seconds": loaded - start, "load_seconds": time.perf_counter() - loaded}
    RUN_LOG.info(
        "read     %d train / %d val / %d test rows in %.2f s",
        len(splits.train),
        len(splits.val),
        len(splits.test) if splits.test is not None else 0,
        timings["read_seconds"] + timings["load_seconds"],
    )
    data = DataFacts(
        settings.data.source.value,
        splits.train.layer,  # an index in [0, layers), whatever sign data.layer had
        splits.train.layers,
        source.dim,
        dropped,
        settings.model.size_b,
    )

    def lightning_for(folder: Path) -> dict[str, Any]:
        from probe_lab.lightning_config import lightning_parts  # imports Lightning: pytorch runs only

        return {"lightning": lightning_parts(cfg, folder)}

    control = load_control(settings, source.dim)
    fit = Fit(config, placement, settings.progress_bar, lightning_for, resolved_config, job_id, settings.eval, control)
    if settings.parity:
        return run_parity(fit, splits, data, timings, out_dir)
    if follower_process():  # a data-parallel fit's process other than the first: it writes nothing
        with tempfile.TemporaryDirectory(prefix="probe_lab-") as scratch:
            train_backend(choice, fit, splits, data, timings, Path(scratch))
        return RunResult(out_dir, {}, math.nan)
    with run_staging(out_dir, resolved_config, resume=settings.resume) as staging:
        run_metrics, files = train_backend(choice, fit, splits, data, timings, staging)
    print_summary(run_summary_lines(choice.name, choice.reason, run_metrics, out_dir, files))
    return RunResult(out_dir, run_metrics, float(run_metrics["val"]["auroc"]))


def check_runnable(settings: RunConfig, job_id: str | None) -> tuple[BackendChoice, Processes]:
    """The run's backend and processes, after every refusal that needs no data: a `data.layer=all`
    run makes them before it reads its layers, so a bad setting costs no read of a large store."""
    if settings.data.test_split <= 0:
        raise ProbeLabError("data.test_split must be > 0 for a training run (test metrics need rows)")
    choice = resolve_backend(settings.backend.name.value, settings.model.size_b, settings.backend.threshold_b)
    processes = Processes.from_trainer_flags(settings.trainer) if choice.name == "pytorch" else ONE_PROCESS
    if job_id is not None and processes.data_parallel and launched_processes() == 1:
        # Lightning's own launcher would start the other processes by rerunning this command: the whole sweep.
        raise ProbeLabError(
            f"trainer.devices={processes.devices} in a sweep: a sweep job's processes are started by its "
            "launcher (hydra/launcher=slurm, one task per process) or by torchrun"
        )
    if settings.eval.controls and processes.data_parallel:
        raise ProbeLabError(
            "eval.controls trains its control probe in one process: leave trainer.devices and trainer.num_nodes unset"
        )
    if settings.parity and processes.data_parallel:
        raise ProbeLabError(
            "experiment=parity trains in one process: leave trainer.devices and trainer.num_nodes unset"
        )
    return choice, processes


def training_config(settings: RunConfig) -> ProbeTrainingConfig:
    """The run's settings as the backends take them."""
    precision = settings.precision.name
    return ProbeTrainingConfig.from_settings(
        settings.probe,
        validation_split=settings.data.validation_split,
        device=settings.device.name.value,
        precision=None if precision == "auto" else precision,
        seed=settings.seed,
        memory_budget_gb=settings.device.memory_budget_gb,
        host_budget_gb=settings.device.host_budget_gb,
        collective_timeout_s=settings.device.collective_timeout_s,
        streaming=settings.data.streaming(),
    )


@dataclass(frozen=True)
class Fit:
    """What every backend's fit in this run shares: its config, its placement, whether to show
    progress, how to build the pytorch backend's Lightning parts for a run folder, the resolved
    config that probe.json records, and how the probe is judged (the eval group, its control set)."""

    config: ProbeTrainingConfig
    placement: Placement
    progress_bar: bool
    lightning_for: Callable[[Path], dict[str, Any]]
    resolved_config: Any
    job_id: str | None = None
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    control: ActivationDataset | None = None  # eval.control's negatives, read


@dataclass(frozen=True)
class DataFacts:
    """What metrics.json records about the data a probe was trained on."""

    source: str
    layer: int | None
    layers: int | None  # how many layers the data's rows hold (None: N×D)
    dim: int
    dropped_nonfinite_rows: int
    model_size_b: float


def train_backend(
    choice: BackendChoice, fit: Fit, splits: Splits, data: DataFacts, timings: dict[str, float], folder: Path
) -> tuple[dict[str, Any], list[str]]:
    """Fit one backend, evaluate it and write its files into `folder`; returns (metrics, file names)."""
    timings = dict(timings)  # read and load; fit, evaluate and write are added here
    # The pytorch backend's minibatch fits keep resume points in the run's staging folder (`run_staging`).
    parts = fit.lightning_for(folder) | {"keep_resume_points": True} if choice.name == "pytorch" else {}
    trainer = backend_class(choice.name)(data.dim, fit.config, run_dir=folder, progress_bar=fit.progress_bar, **parts)
    placement = fit.placement if choice.name == "pytorch" else None  # sklearn decides its own (the host)
    RUN_LOG.info("fit      %s backend (%s)", choice.name, choice.reason)
    trainer.fit_datasets(splits.train, splits.val, placement)
    if not trainer.leads:
        return {}, []
    weights = trainer.weights
    if weights is None or trainer.fit_seconds is None:
        raise RuntimeError("the backend finished fit without a probe")
    RUN_LOG.info("fit      done in %.3f s; val AUROC %.4f", trainer.fit_seconds, trainer.val_auroc)
    timings["fit_seconds"] = trainer.fit_seconds

    start = time.perf_counter()
    evaluation = assess(
        weights,
        splits,
        fit.evaluation,
        seed=fit.config.seed,
        val_logits=trainer.val_scores,
        out_of_fold=trainer.cross_validation is not None,
        control=fit.control,
    )
    timings["evaluate_seconds"] = time.perf_counter() - start

    run_metrics: dict[str, Any] = {
        "backend": choice.name,
        "backend_reason": choice.reason,
        "device": trainer.fit_details.get("device", "cpu"),
        "precision": trainer.fit_details.get("precision", "32"),
        "model_size_b": data.model_size_b,
        "data": data.source,
        "layer": data.layer,
        "layers": data.layers,
        "dropped_nonfinite_rows": data.dropped_nonfinite_rows,
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test) if splits.test is not None else 0,
        "input_dim": data.dim,
        "fit_seconds": trainer.fit_seconds,
        "kind": fit.config.kind.value,
        "regularization": trainer.regularization,
        "standardize": trainer.standardized,
        "fit": trainer.fit_details,
        "placement": trainer.placement.to_dict() if trainer.placement is not None else None,
        "threshold": evaluation.threshold,
        "val": evaluation.val,
        "test": evaluation.test,
        "timings": timings,
    }
    if evaluation.test_intervals is not None:
        run_metrics["test_intervals"] = evaluation.test_intervals
    if evaluation.thresholds:
        run_metrics["thresholds"] = evaluation.thresholds
    if evaluation.test_per_sample is not None:
        run_metrics["test_per_sample"] = evaluation.test_per_sample
    if trainer.regularization_path:
        run_metrics["regularization_path"] = trainer.regularization_path
    if trainer.cross_validation is not None:
        run_metrics["cross_validation"] = trainer.cross_validation
    if fit.evaluation.controls:
        start = time.perf_counter()
        run_metrics["controls"] = train_controls(choice, fit, splits, data, evaluation.test["auroc"])
        timings["controls_seconds"] = time.perf_counter() - start
    if fit.job_id is not None:
        run_metrics[JOB_ID_KEY] = fit.job_id
    start = time.perf_counter()
    write_artifacts(folder, trainer, evaluation, splits, run_metrics, fit.resolved_config)
    timings["write_seconds"] = time.perf_counter() - start
    write_json(folder / "metrics.json", run_metrics)

    files = ARTIFACTS + (["regularization_path.png"] if trainer.regularization_path else [])
    # logs and checkpoints (a fit's resume points are not published)
    files += sorted(f"{path.name}/" for path in folder.iterdir() if path.is_dir() and path.name != RESUME)
    return run_metrics, files


def train_controls(
    choice: BackendChoice, fit: Fit, splits: Splits, data: DataFacts, probe_test_auroc: float
) -> dict[str, Any]:
    """eval.controls: the same backend and settings on permuted labels, and a random direction
    (`probe_lab.assessment.control_probes`); the control fit's own files are not kept."""
    RUN_LOG.info("controls the same probe on permuted labels, and a random direction")
    with tempfile.TemporaryDirectory(prefix="probe_lab-control-") as scratch:

        def train(train_split: ActivationDataset, val_split: ActivationDataset) -> ProbeTrainer:
            parts = fit.lightning_for(Path(scratch)) if choice.name == "pytorch" else {}
            trainer = backend_class(choice.name)(data.dim, fit.config, progress_bar=False, **parts)
            trainer.fit_datasets(train_split, val_split, fit.placement if choice.name == "pytorch" else None)
            return trainer

        return control_probes(train, splits, probe_test_auroc, fit.config.seed)


def run_parity(fit: Fit, splits: Splits, data: DataFacts, timings: dict[str, float], out_dir: Path) -> RunResult:
    """Train both backends on the same splits, seed and regularization; each backend's run goes into
    its own subfolder, and parity.json / parity.png compare them."""
    with staged_artifacts(out_dir) as staging:
        outcomes = []
        for name in ("sklearn", "pytorch"):
            choice = BackendChoice(name, "experiment=parity trains both backends")
            (staging / name).mkdir()
            train_backend(choice, fit, splits, data, timings, staging / name)
            outcomes.append(BackendOutcome.from_run_folder(staging / name))
        numbers = compare(*outcomes)
        job = {JOB_ID_KEY: fit.job_id} if fit.job_id is not None else {}
        write_json(staging / "parity.json", numbers | job)
        plot_parity(staging / "parity.png", *outcomes)
    print_summary(parity_run_lines(numbers, len(splits.train), data.dim, out_dir))
    return RunResult(out_dir, {"parity": numbers}, max(outcome.val_auroc for outcome in outcomes))


def check_width(model: ModelConfig, source: Source) -> None:
    """The data's width against the model's, before anything is read."""
    if model.hidden_dim is not None and model.hidden_dim != source.dim:
        raise ProbeLabError(
            f"model.hidden_dim={model.hidden_dim} (model={model.name}) but {source.name} has {source.dim} dims: "
            "choose the model these activations come from, or set model.hidden_dim=null to take the width from the data"
        )


def load_splits(settings: RunConfig, source: Source, placement: Placement) -> tuple[Splits, int]:
    """The source read as `placement` says, checked (width, finiteness) and split by index.

    Returns (splits, rows dropped for holding NaN/Inf with data.drop_nonfinite=true).
    """
    dataset = source.read(onto=placement.device if placement.scan_onto_device else None)
    dropped = 0
    if settings.data.drop_nonfinite:
        dataset, dropped = dataset.drop_nonfinite()
        if dropped:
            log.warning("%s: dropped %d of %d rows holding NaN or Inf", dataset.name, dropped, dropped + len(dataset))
    dataset.check_finite()
    splits = split_dataset(dataset, settings.data.validation_split, settings.data.test_split, settings.seed)
    return splits, dropped
