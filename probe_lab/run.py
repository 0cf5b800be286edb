"""One training run, wired together: config → backend → data → fit → evaluate → artifacts (the fit,
evaluation and artifacts of each backend in `probe_lab.backend_run`).

This module and `__main__` are the only ones that see Hydra's DictConfig; everything below takes
plain dataclasses and datasets. Every file a run writes — the probe, its metrics and plot, and the
Lightning logs and checkpoint — is staged and published together only when the run succeeds.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from probe_lab.data.sources import Source, open_source
from probe_lab.data.splits import Splits, hold_splits, split_dataset
from probe_lab.errors import ProbeLabError
from probe_lab.report.run_log import RUN_LOG, print_summary
from probe_lab.report.summary import run_summary_lines
from probe_lab.resuming import run_staging
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.settings.backend import BackendChoice, resolve_backend
from probe_lab.settings.data import LAYER_ALL
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
    choice, processes = check_runnable(cfg, settings, job_id)
    config = training_config(settings)
    resolved_config = OmegaConf.to_container(cfg, resolve=True)

    RUN_LOG.info("backend  %s", "sklearn and pytorch (experiment=parity)" if settings.parity else choice.name)
    if not settings.parity and (ignored := ignored_trainer_flags(settings.trainer, choice.name)):
        log.warning(ignored)
    opening = time.perf_counter()
    source = source or open_source(settings.data, settings.seed, progress=settings.progress_bar)
    check_width(settings.model, source)
    open_seconds = time.perf_counter() - opening
    # The fit, its assessment (sklearn's metrics) and its files (matplotlib's plots) are imported once the
    # data are open: a missing or unreadable file is refused without waiting for them, and the read's
    # time does not count them.
    from probe_lab.assessment import load_control
    from probe_lab.backend_run import DataFacts, Fit, run_parity, train_backend

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
    reading = time.perf_counter()
    splits, dropped = load_splits(settings, source, placement)
    loaded = time.perf_counter()
    if placement.splits_on_device:
        splits = hold_splits(splits, placement.device)
    timings = {"read_seconds": open_seconds + loaded - reading, "load_seconds": time.perf_counter() - loaded}
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


def check_runnable(cfg: DictConfig, settings: RunConfig, job_id: str | None) -> tuple[BackendChoice, Processes]:
    """The run's backend and processes, after every refusal that needs no data (the Lightning groups'
    included, for a run that trains the pytorch backend): a run makes them before it reads its data,
    so a bad setting costs no read of a large store."""
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
    if choice.name == "pytorch" or settings.parity:
        from probe_lab.lightning_config import check_lightning_settings  # imports Lightning: pytorch runs only

        check_lightning_settings(cfg)
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
