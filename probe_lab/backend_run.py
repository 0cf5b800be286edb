"""One backend's fit in a run: trained, assessed and written into its folder; and the parity
experiment's two fits, compared.

`probe_lab.run` imports this module once the run's data are open: what it imports (sklearn's metrics
for the assessment, matplotlib for the plots, the backends) is not needed to refuse bad settings or a
missing or unreadable file.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe_lab.artifacts import RESUME, staged_artifacts, write_json
from probe_lab.assessment import assess, control_probes
from probe_lab.backends import backend_class
from probe_lab.backends.base import ProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import Splits
from probe_lab.report.parity import BackendOutcome, compare
from probe_lab.report.plots import plot_parity
from probe_lab.report.run_files import ARTIFACTS, write_artifacts
from probe_lab.report.run_log import RUN_LOG, print_summary
from probe_lab.report.summary import parity_run_lines
from probe_lab.report.sweep.job import JOB_ID_KEY
from probe_lab.run import RunResult
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.settings.backend import BackendChoice
from probe_lab.settings.evaluation import EvalSettings
from probe_lab.settings.placement import Placement


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
