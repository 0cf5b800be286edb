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

import csv
import dataclasses
import difflib
import functools
import logging
import re
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from probe_lab.artifacts import staged_artifacts, write_json
from probe_lab.cli_help import HYDRA_FLAGS, answer_help_or_version
from probe_lab.errors import ProbeLabError
from probe_lab.report.run_log import RUN_LOG, print_summary
from probe_lab.report.sweep.job import ERROR_FILE, error_line, record_failure, split_override
from probe_lab.settings.backend import BackendChoice, resolve_backend
from probe_lab.settings.checks import require_choice
from probe_lab.settings.data import (
    LAYER_ALL,
    SCHEMAS,
    DataSettings,
    DataSource,
    NpyData,
    PtFilesData,
    StoreData,
    renamed_data_settings,
)
from probe_lab.settings.ignored import ignored_trainer_flags
from probe_lab.settings.schema import RunConfig, register_configs, to_settings
from probe_lab.version import version_line

if TYPE_CHECKING:
    from probe_lab.data.dataset import ActivationDataset
    from probe_lab.data.sources import Source

log = logging.getLogger(__name__)

TRANSFER_FILES = ("transfer.csv", "transfer.json", "transfer.png")
TRANSFER_KEYS = ("name", "seed")  # keys of a datasets entry beside its source's fields
EXAMPLE = "datasets=[{source:npy,x:A.npy,y:A_labels.npy},{source:npy,x:B.npy,y:B_labels.npy}]"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class TransferConfig(RunConfig):
    """The transfer app's schema: a training run's settings plus `datasets`, the list of data settings
    (each a mapping, see the module docstring). `data` is not read: every dataset carries its own."""

    datasets: list[Any] = MISSING


@dataclass(frozen=True)
class TransferDataset:
    """One entry of `datasets`, checked: its position, label, data settings and run seed."""

    index: int
    name: str
    data: DataSettings
    seed: int

    @property
    def setting(self) -> str:
        """How error messages name it: `datasets[k]`."""
        return f"datasets[{self.index}]"

    @property
    def folder(self) -> str:
        """Its training run's folder in the output folder."""
        return f"train_{self.name}"


@dataclass(frozen=True)
class TransferMatrix:
    """Every probe scored on every dataset's test split: `auroc[i][j]` is the probe trained on `names[i]`
    scored on the test split of `names[j]` (likewise `ap`, `accuracy` at the probe's own threshold, and
    `n_test`, the rows scored)."""

    names: list[str]
    auroc: list[list[float]]
    ap: list[list[float]]
    accuracy: list[list[float]]
    n_test: list[list[int]]

    def best_transfer(self) -> tuple[int, int] | None:
        """(trained on, tested on) of the highest off-diagonal AUROC; None for a single dataset."""
        cells = [(i, j) for i in range(len(self.names)) for j in range(len(self.names)) if i != j]
        return max(cells, key=lambda cell: self.auroc[cell[0]][cell[1]]) if cells else None

    def to_dict(self) -> dict[str, Any]:
        """transfer.json's content: the matrices, and the best off-diagonal cell (null for one dataset)."""
        best = self.best_transfer()
        return {
            "names": self.names,
            "rows": "trained on",
            "columns": "tested on",
            "auroc": self.auroc,
            "ap": self.ap,
            "accuracy": self.accuracy,
            "n_test": self.n_test,
            "runs": {name: f"train_{name}" for name in self.names},
            "best_transfer": None
            if best is None
            else {
                "trained_on": self.names[best[0]],
                "tested_on": self.names[best[1]],
                "auroc": self.auroc[best[0]][best[1]],
            },
        }


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
        transfer(cfg, out_dir)
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


def parse_datasets(entries: Any, seed: int) -> list[TransferDataset]:
    """`datasets` as checked settings, each named uniquely (`name`, else a default from its file or
    source); an error names the entry (`datasets[k]`) and its key."""
    if not isinstance(entries, list | tuple):
        raise ProbeLabError(f"datasets must be a list of data settings, e.g. '{EXAMPLE}'; got {entries!r}")
    if not entries:
        raise ProbeLabError(f"datasets is empty: give at least one data setting, e.g. '{EXAMPLE}'")
    parsed = [dataset_entry(entry, index, seed) for index, entry in enumerate(entries)]
    taken: dict[str, int] = {}
    for index, (name, _, _) in enumerate(parsed):
        if name is not None:
            if name in taken:
                raise ProbeLabError(f"datasets[{index}].name={name} is datasets[{taken[name]}].name too")
            taken[name] = index
    datasets = []
    for index, (name, data, own_seed) in enumerate(parsed):
        if name is None:
            name = default_name(data, index)
            while name in taken:
                name = f"{name}_{index}"
            taken[name] = index
        datasets.append(TransferDataset(index, name, data, own_seed))
    return datasets


def dataset_entry(entry: Any, index: int, seed: int) -> tuple[str | None, DataSettings, int]:
    """One entry of `datasets` as (its name or None, its source's settings, its run seed), each value
    type-checked against the source's schema and checked as `data=<source>` checks it."""
    where = f"datasets[{index}]"
    if not isinstance(entry, dict):
        raise ProbeLabError(f"{where} must be a mapping of data settings like {{source: npy, x: X.npy}}, got {entry!r}")
    values = dict(entry)
    if "source" not in values:
        choices = ", ".join(s.value for s in DataSource)
        raise ProbeLabError(f"{where}.source is required: one of {choices}")
    source = require_choice(DataSource, values.pop("source"), f"{where}.source")
    name = values.pop("name", None)
    if name is not None and (isinstance(name, bool) or not _NAME.fullmatch(str(name))):
        raise ProbeLabError(f"{where}.name must be letters, digits, '.', '_' or '-' (a folder name), got {name!r}")
    own_seed = values.pop("seed", seed)
    if isinstance(own_seed, bool) or not isinstance(own_seed, int) or own_seed < 0:
        raise ProbeLabError(f"{where}.seed must be a non-negative integer, got {own_seed!r}")
    schema = SCHEMAS[source]
    declared = [f.name for f in dataclasses.fields(schema) if f.name != "source"]
    for key in values:
        if key not in declared:
            close = difflib.get_close_matches(str(key), [*declared, *TRANSFER_KEYS], n=1)
            hint = f"did you mean {where}.{close[0]}?" if close else f"known: {', '.join([*declared, *TRANSFER_KEYS])}"
            raise ProbeLabError(f"unknown setting {where}.{key} for source {source.value} ({hint})")
    node = OmegaConf.structured(schema)
    try:
        with renamed_data_settings(where):
            node.merge_with(values)
            data = OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        message = str(err).strip().splitlines()[0]
        raise ProbeLabError(f"invalid setting {where}{f'.{key}' if key else ''}: {message}") from None
    assert isinstance(data, DataSettings)
    if data.layer == LAYER_ALL:
        raise ProbeLabError(f"{where}.layer=all: probe_lab.transfer trains one probe per dataset; choose a layer")
    if data.test_split <= 0:
        raise ProbeLabError(f"{where}.test_split must be > 0: every probe is scored on each dataset's test split")
    return (None if name is None else str(name)), data, own_seed


def default_name(data: DataSettings, index: int) -> str:
    """A dataset's label when its entry gives none: the stem of its file (npy's x) or the name of its
    folder (pt_files' dir, store's path), made a folder name; `<source>_<index>` for generated data."""
    location = {NpyData: "x", PtFilesData: "dir", StoreData: "path"}.get(type(data))
    value = getattr(data, location) if location else None
    stem = Path(str(value)).stem if location == "x" else Path(str(value)).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-") if value else ""
    return name or f"{data.source.value}_{index}"


@contextmanager
def naming(dataset: TransferDataset) -> Iterator[None]:
    """A ProbeLabError raised inside names the dataset: its entry's settings (see `renamed_data_settings`),
    and `datasets[k] (name)` in front when the message does not name the entry already."""
    try:
        with renamed_data_settings(dataset.setting):
            yield
    except ProbeLabError as err:
        text = str(err)
        named = text if dataset.setting in text else f"{dataset.setting} ({dataset.name}): {text}"
        raise ProbeLabError(named) from None


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
    """The pytorch backend's Lightning parts for a run folder (`probe_lab.run.Fit.lightning_for`)."""
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
    from probe_lab.assessment import check_control
    from probe_lab.data.sources import load_dataset
    from probe_lab.data.splits import hold_splits
    from probe_lab.report.summary import run_summary_lines
    from probe_lab.run import DataFacts, Fit, load_splits, train_backend, training_config
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
    control = None
    if settings.eval.control is not None:
        control = load_dataset(settings.eval.control, dataset.seed, require_labels=False)
        check_control(control, source.dim)
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


def score_matrix(names: list[str], probes: list[Path], tests: list[ActivationDataset]) -> TransferMatrix:
    """Each probe file (trained on `names[i]`) scored on each test split, as a run scores its own."""
    from probe_lab import metrics as metrics_lib
    from probe_lab.probe import load_probe

    rows: dict[str, list[list[float]]] = {"auroc": [], "ap": [], "accuracy": []}
    for path in probes:
        weights, header = load_probe(path)
        threshold = float(header["threshold"])
        scores = [metrics_lib.evaluate(t.labels, weights.predict_proba(t), threshold, with_recall=False) for t in tests]
        for key, row in rows.items():
            row.append([cell[key] for cell in scores])
    n_test = [[len(test) for test in tests] for _ in probes]
    return TransferMatrix(names, rows["auroc"], rows["ap"], rows["accuracy"], n_test)


def write_matrix(folder: Path, matrix: TransferMatrix) -> None:
    """transfer.csv (AUROC, rows trained on, columns tested on, full precision), transfer.json, transfer.png."""
    from probe_lab.report.plots import plot_transfer

    with open(folder / "transfer.csv", "w", newline="") as file:
        table = csv.writer(file)
        table.writerow(["trained_on", *matrix.names])
        table.writerows([name, *row] for name, row in zip(matrix.names, matrix.auroc, strict=True))
    write_json(folder / "transfer.json", matrix.to_dict())
    plot_transfer(folder / "transfer.png", matrix.names, matrix.auroc)


def transfer_lines(matrix: TransferMatrix, choice: BackendChoice, dim: int, out_dir: Path) -> list[str]:
    """The transfer in a few lines: what was trained, the AUROC matrix, the best off-diagonal transfer and
    the files written."""
    names = matrix.names
    width = max(8, *(len(name) + 2 for name in names))
    lines = [
        f"probe_lab.transfer: {len(names)} dataset{'s' if len(names) > 1 else ''} of {dim} dims, "
        f"{choice.name} backend ({choice.reason})",
        "  test AUROC: rows trained on, columns tested on (* the probe's own test split)",
        "  " + " " * width + "".join(f"{name:>{width - 1}} " for name in names),
    ]
    for i, name in enumerate(names):
        cells = "".join(f"{f'{v:.4f}' + ('*' if i == j else ' '):>{width}}" for j, v in enumerate(matrix.auroc[i]))
        lines.append(f"  {name:<{width}}{cells}")
    best = matrix.best_transfer()
    if best is None:
        lines.append("  best     no transfer to compare: one dataset")
    else:
        (i, j), value = best, matrix.auroc[best[0]][best[1]]
        lines.append(
            f"  best     {names[i]} → {names[j]}: AUROC {value:.4f} ({names[j]}'s own probe {matrix.auroc[j][j]:.4f})"
        )
    folders = ", ".join(f"train_{name}/" for name in names)
    lines.append(f"  outputs  {out_dir}: {', '.join(TRANSFER_FILES)}, {folders}")
    return lines


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
