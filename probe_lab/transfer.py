"""`python -m probe_lab.transfer 'datasets=[{source: npy, x: A.npy, y: A_y.npy}, ...]'`: how well a probe
trained on one dataset scores the others.

Each entry of `datasets` is a data setting as the `data` group takes it — `source` and that source's
fields — plus two optional keys: `name`, the dataset's label in the matrix and its folder `train_<name>/`
(default: the stem of its file or folder, else `<source>_<k>` for the k-th entry), and `seed`, the seed of
its run (default: the top-level `seed`). Every other setting (backend, model, probe, eval, device,
trainer, ...) is shared and means what it means to `python -m probe_lab`.

Each dataset is trained exactly as `python -m probe_lab data=<source> data.<field>=... seed=<its seed>`
trains it: the same split, probe and files, in `<out>/train_<name>/`. Then every probe scores every
dataset's test split: `transfer.csv` (test AUROC, a row per dataset trained on, a column per dataset
tested on), `transfer.json` (names, and per cell AUROC, AP, accuracy at the probe's own threshold and the
number of test rows) and `transfer.png` (the AUROC heat map). The diagonal is each run's own test AUROC.
Every file appears when all datasets are trained and scored; after an error, none does.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf

from probe_lab import stopping
from probe_lab.artifacts import staged_artifacts
from probe_lab.cli_help import HYDRA_FLAGS, answer_help_or_version
from probe_lab.errors import ProbeLabError
from probe_lab.report.run_log import RUN_LOG, print_summary
from probe_lab.report.sweep.job import ERROR_FILE, error_line, record_failure, split_override
from probe_lab.report.transfer_matrix import TransferMatrix, score_matrix, transfer_lines, write_matrix
from probe_lab.settings.backend import BackendChoice, resolve_backend
from probe_lab.settings.data import (
    SCHEMAS,
    DataSettings,
)
from probe_lab.settings.ignored import ignored_trainer_flags
from probe_lab.settings.schema import RunConfig, register_configs, to_settings
from probe_lab.settings.transfer import EXAMPLE, TransferConfig, TransferDataset, naming, parse_datasets
from probe_lab.stopping import Stopped, sigterm_stops_the_run
from probe_lab.version import version_line

if TYPE_CHECKING:
    from probe_lab.data.dataset import ActivationDataset
    from probe_lab.data.sources import Source

log = logging.getLogger(__name__)


def transfer_schema() -> DictConfig:
    """The `transfer_schema` node that conf/transfer.yaml merges after config.yaml: TransferConfig's type
    and `datasets`, with every field of RunConfig missing, so that the merge keeps what config.yaml and
    its groups composed (a missing value never replaces one)."""
    node = OmegaConf.structured(TransferConfig)
    for item in dataclasses.fields(RunConfig):
        node[item.name] = MISSING
    return node


register_configs()
ConfigStore.instance().store(name="transfer_schema", node=transfer_schema())


def main() -> None:
    """`python -m probe_lab.transfer` and the `probe-lab-transfer` console script: --help and --version
    answered here, a `data` setting refused (each dataset is an entry of `datasets`), the rest composed and
    run by Hydra."""
    args = sys.argv[1:]
    if answer_help_or_version(args, "probe_lab.transfer", transfer_help):
        return
    given = [arg for arg in args if split_override(arg)[0].split(".")[0] == "data"]
    if given:
        print(f"probe_lab.transfer: error: {data_refused(given[0])}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


@hydra.main(version_base=None, config_path="pkg://probe_lab.conf", config_name="transfer")
def hydra_main(cfg: DictConfig) -> None:
    """Bad input: its line on stderr, in the log and in error.txt, exit status 2 (in a sweep, the next job
    runs). Any other exception is also raised, with its traceback in error.txt."""
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    (out_dir / ERROR_FILE).unlink(missing_ok=True)
    try:
        with sigterm_stops_the_run():
            transfer(cfg, out_dir)
    except Stopped:  # nothing of the transfer was published
        line = "stopped by SIGTERM: run the same command again"
        print(f"probe_lab.transfer: error: {line}", file=sys.stderr)
        RUN_LOG.error(line)
        record_failure(out_dir, line, "", None)
        sys.exit(stopping.EXIT_CODE)
    except Exception as err:
        line = error_line(err)
        bad_input = isinstance(err, ProbeLabError)
        print(f"probe_lab.transfer: error: {line}", file=sys.stderr)
        RUN_LOG.error(line, exc_info=None if bad_input else err)
        record_failure(out_dir, line, "" if bad_input else traceback.format_exc(), None)
        if not bad_input:
            raise
        if hydra_cfg.mode != RunMode.MULTIRUN:
            sys.exit(2)


def data_refused(setting: str) -> str:
    """The error line for a `data` setting given to the transfer app."""
    return (
        f"{setting}: probe_lab.transfer takes no data setting; give each dataset's settings as an entry of "
        f"datasets, e.g. '{EXAMPLE}'"
    )


def transfer(cfg: DictConfig, out_dir: Path) -> TransferMatrix:
    """Train a probe on each dataset of `cfg.datasets` into `out_dir/train_<name>/`, score every probe on
    every dataset's test split and write the matrix (transfer.csv, transfer.json, transfer.png); all
    of it published together. Every setting and every dataset's width is checked before any training."""
    settings = transfer_settings(cfg)
    datasets = parse_datasets(settings.datasets, settings.seed)
    choice = resolve_backend(settings.backend.name.value, settings.model.size_b, settings.backend.threshold_b)
    check_one_process(settings, choice)
    RUN_LOG.info("transfer %d datasets: %s", len(datasets), ", ".join(d.name for d in datasets))
    RUN_LOG.info("backend  %s", choice.name)
    if ignored := ignored_trainer_flags(settings.trainer, choice.name):
        log.warning(ignored)
    sources = open_sources(settings, datasets)
    names = [dataset.name for dataset in datasets]
    with staged_artifacts(out_dir) as staging:
        tests, own = [], []
        for dataset, (source, open_seconds) in zip(datasets, sources, strict=True):
            with naming(dataset):
                metrics, test = train_dataset(cfg, settings, dataset, source, choice, staging, out_dir, open_seconds)
            tests.append(test)
            own.append(metrics["test"]["auroc"])
        matrix = score_matrix(names, [staging / d.folder / "probe.safetensors" for d in datasets], tests)
        for i, name in enumerate(names):
            if matrix.auroc[i][i] != own[i]:
                raise RuntimeError(f"{name}: the probe's test AUROC rescored ({matrix.auroc[i][i]}) is not its run's")
        write_matrix(staging, matrix)
    print_summary(transfer_lines(matrix, choice, sources[0][0].dim, out_dir))
    return matrix


def transfer_settings(cfg: DictConfig) -> TransferConfig:
    """The composed config checked as a TransferConfig, or a one-line error naming the setting."""
    if OmegaConf.is_missing(cfg, "datasets"):
        raise ProbeLabError(f"datasets is required: a list of data settings, e.g. '{EXAMPLE}'")
    settings: TransferConfig = to_settings(cfg, TransferConfig)
    if settings.data != DataSettings():
        raise ProbeLabError(data_refused("data"))
    if settings.parity:
        raise ProbeLabError("experiment=parity is not supported by probe_lab.transfer: it trains one backend")
    return settings


def check_one_process(settings: RunConfig, choice: BackendChoice) -> None:
    """Every probe is trained in this process: a data-parallel fit is refused."""
    from probe_lab.settings.parallel import ONE_PROCESS, Processes

    processes = Processes.from_trainer_flags(settings.trainer) if choice.name == "pytorch" else ONE_PROCESS
    if processes.data_parallel:
        raise ProbeLabError(
            "probe_lab.transfer trains each probe in one process: leave trainer.devices and trainer.num_nodes unset"
        )


def open_sources(settings: TransferConfig, datasets: list[TransferDataset]) -> list[tuple[Source, float]]:
    """Each dataset's source opened (nothing read whole but generated data), with the seconds it took;
    every width checked against the model's and the first dataset's."""
    from probe_lab.data.sources import open_source
    from probe_lab.run import check_width

    sources: list[tuple[Source, float]] = []
    first = datasets[0]
    for dataset in datasets:
        start = time.perf_counter()
        with naming(dataset):
            source = open_source(dataset.data, dataset.seed, progress=settings.progress_bar)
            check_width(settings.model, source)
        sources.append((source, time.perf_counter() - start))
        width = sources[0][0].dim
        if source.dim != width:
            raise ProbeLabError(
                f"{dataset.setting} ({dataset.name}) has {source.dim} dims but {first.setting} "
                f"({first.name}) has {width}: every dataset must hold activations of the same width"
            )
    return sources


def dataset_config(cfg: DictConfig, dataset: TransferDataset) -> DictConfig:
    """The config `python -m probe_lab` composes for this dataset: the shared settings with its data and
    seed (interpolations kept), as probe.json records it and the Lightning parts are built from it."""
    values = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    assert isinstance(values, dict)
    values.pop("datasets")
    values["data"] = OmegaConf.to_container(OmegaConf.structured(dataset.data), enum_to_str=True)
    values["seed"] = dataset.seed
    return OmegaConf.create(values)


def lightning_parts_for(cfg: DictConfig, folder: Path) -> dict[str, Any]:
    """The pytorch backend's Lightning parts for a run folder (`probe_lab.backend_run.Fit.lightning_for`)."""
    from probe_lab.lightning_config import lightning_parts

    return {"lightning": lightning_parts(cfg, folder)}


def train_dataset(
    cfg: DictConfig,
    settings: TransferConfig,
    dataset: TransferDataset,
    source: Source,
    choice: BackendChoice,
    staging: Path,
    out_dir: Path,
    open_seconds: float,
) -> tuple[dict[str, Any], ActivationDataset]:
    """Train and evaluate the dataset's probe as a training run of its own, into `staging/train_<name>/`;
    returns (its metrics.json, its test split)."""
    from probe_lab.assessment import load_control
    from probe_lab.backend_run import DataFacts, Fit, train_backend
    from probe_lab.data.splits import hold_splits
    from probe_lab.report.summary import run_summary_lines
    from probe_lab.run import load_splits, training_config
    from probe_lab.settings.placement import decide_placement

    run_settings = dataclasses.replace(settings, data=dataset.data, seed=dataset.seed)
    run_cfg = dataset_config(cfg, dataset)
    config = training_config(run_settings)
    RUN_LOG.info(
        "data     %s (%s): %s, %d rows, %d dims", dataset.setting, dataset.name, source.name, source.rows, source.dim
    )
    start = time.perf_counter()
    sizes = source.split_bytes(dataset.data.validation_split, dataset.data.test_split)
    placement = decide_placement(config, sizes, backend=choice.name)
    RUN_LOG.info("placement %s", placement.describe())
    splits, dropped = load_splits(run_settings, source, placement)
    loaded = time.perf_counter()
    if placement.splits_on_device:
        splits = hold_splits(splits, placement.device)
    timings = {"read_seconds": open_seconds + loaded - start, "load_seconds": time.perf_counter() - loaded}
    facts = DataFacts(
        dataset.data.source.value, splits.train.layer, splits.train.layers, source.dim, dropped, settings.model.size_b
    )
    control = load_control(run_settings, source.dim)
    fit = Fit(
        config=config,
        placement=placement,
        progress_bar=settings.progress_bar,
        lightning_for=functools.partial(lightning_parts_for, run_cfg),
        resolved_config=OmegaConf.to_container(run_cfg, resolve=True),
        evaluation=settings.eval,
        control=control,
    )
    folder = staging / dataset.folder
    folder.mkdir()
    metrics, files = train_backend(choice, fit, splits, facts, timings, folder)
    for line in run_summary_lines(choice.name, choice.reason, metrics, out_dir / dataset.folder, files):
        RUN_LOG.info(line)
    assert splits.test is not None
    return metrics, splits.test


def transfer_help(overrides: Sequence[str]) -> str:
    """`python -m probe_lab.transfer --help`: the datasets entry's keys by source, then Hydra's flags."""
    del overrides
    common = [f.name for f in dataclasses.fields(DataSettings) if f.name != "source"]
    by_source = [
        f"    {source.value:<11}"
        + ", ".join(f.name for f in dataclasses.fields(schema) if f.name not in (*common, "source"))
        for source, schema in SCHEMAS.items()
    ]
    lines = [
        f"{version_line('probe_lab.transfer')}: a probe trained on each dataset, scored on every dataset's test split",
        "",
        "usage: python -m probe_lab.transfer 'datasets=[{source:npy,x:A.npy,y:A_y.npy,name:A},{...}]' [key=value ...]",
        "",
        "  datasets=[...]         each entry a data setting: source and that source's fields, as data=SOURCE",
        "                         data.FIELD=... take them, plus name (its label and folder train_NAME/; default:",
        "                         its file's stem, else SOURCE_K) and seed (its run's seed; default: seed)",
        "  fields by source:",
        *by_source,
        f"    every source: {', '.join(common)}",
        "  Every other setting is shared, as python -m probe_lab takes it (python -m probe_lab --help lists them).",
        "  Writes train_NAME/ (each dataset's training run), transfer.csv, transfer.json and transfer.png.",
        "",
        "Hydra:",
        HYDRA_FLAGS,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
