"""The transfer app's settings: its schema (a training run's settings plus `datasets`) and each entry
of `datasets` checked into the data settings of one dataset (`TransferDataset`), named uniquely; an
error names the entry (`datasets[k]`) and its key."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from probe_lab.errors import ProbeLabError
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
from probe_lab.settings.schema import RunConfig

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
