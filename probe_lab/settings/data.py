"""The `data` config group's schemas, one per source, and the streaming settings.

Every source shares `DataSettings` (splits, the NaN/Inf policy and how minibatches stream); each
source's schema adds the fields it reads, so a field of another source is an unknown key at
composition. `StreamingSettings` is declared once: the data group carries its fields flat
(`data.num_workers`, ...), and the Python API's `ProbeTrainingConfig.streaming` holds them as one value.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from probe_lab.errors import ProbeLabError
from probe_lab.settings.checks import require_positive

LAYER_ALL = "all"  # data.layer=all: one probe per layer of N×L×D activations


class DataSource(StrEnum):
    synthetic = "synthetic"
    drawn = "drawn"
    seed_task = "seed_task"
    npy = "npy"
    pt_files = "pt_files"
    store = "store"


@dataclass
class StreamingSettings:
    """How a training split that is not resident streams from host memory or disk: AdamW's minibatches,
    or the blocks each full-batch L-BFGS evaluation reads (num_workers threads, read_mb per block).

    num_workers: reader threads (None: `reader_threads`' defaults); read_mb: MB per contiguous read;
    shuffle_reads: reads shuffled together; prefetch_batches: batches each reader thread keeps ready.
    """

    num_workers: int | None = field(
        default=None,
        metadata={"help": "streaming: reader threads (null: 2 for AdamW, up to 8 for full-batch passes)"},
    )
    read_mb: float = field(default=16.0, metadata={"help": "streaming: MB per contiguous read"})
    shuffle_reads: int = field(default=4, metadata={"help": "AdamW streaming: reads shuffled together"})
    prefetch_batches: int = field(default=1, metadata={"help": "streaming: batches (blocks) each thread keeps ready"})

    def __post_init__(self) -> None:
        workers = self.num_workers
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise ProbeLabError(f"data.num_workers must be a non-negative integer or null, got {workers!r}")
        require_positive(self.read_mb, "data.read_mb")
        for name in ("shuffle_reads", "prefetch_batches"):
            require_positive(getattr(self, name), f"data.{name}", integer=True)

    def reader_threads(self, *, full_batch: bool) -> int:
        """`num_workers`, or by default 2 for AdamW's minibatches and min(8, CPU cores) for the passes
        of full-batch L-BFGS, each of which reads the whole split: on a GPU machine 2 threads read a
        store at 2.8× a sequential read's time per pass and 8 at 1.0× (BENCHMARKS.md)."""
        if self.num_workers is not None:
            return self.num_workers
        return min(8, os.cpu_count() or 1) if full_batch else 2

    def streaming(self) -> StreamingSettings:
        """These settings on their own (a data schema's streaming fields, without the rest)."""
        return StreamingSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(StreamingSettings)})


@dataclass
class DataSettings(StreamingSettings):
    """What every source shares: the splits (stratified, seeded), the NaN/Inf policy, streaming."""

    source: DataSource = DataSource.synthetic
    validation_split: float = field(default=0.2, metadata={"help": "fraction of rows held out for validation"})
    test_split: float = field(default=0.2, metadata={"help": "fraction of rows held out for the test metrics"})
    drop_nonfinite: bool = field(
        default=False, metadata={"help": "drop rows holding NaN/Inf (false: they fail the run, counted)"}
    )

    @property
    def layer(self) -> int | None:
        """The layer of N×L×D activations; sources without a layer axis have none."""
        return None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.source, DataSource):
            self.source = DataSource(self.source)
        check_split_fractions(self.validation_split, self.test_split)


@dataclass
class ActivationLikeData(DataSettings):
    """What data=synthetic and data=drawn share: `n` rows of width `dim` shaped like a language model's
    activations (`probe_lab.data.synthetic.activation_like`): `n_outliers` dimensions of scale
    `outlier_scale`, and labels that follow a direction with strength `signal`."""

    n: int = 4000
    dim: int = 256
    n_outliers: int = 4
    outlier_scale: float = 30.0
    signal: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_size(self.n, self.dim)
        if self.n_outliers < 0 or self.outlier_scale <= 0:
            raise ProbeLabError("data.n_outliers must be >= 0 and data.outlier_scale > 0")


@dataclass
class SyntheticData(ActivationLikeData):
    """Activation-like rows generated in-process."""

    source: DataSource = DataSource.synthetic


@dataclass
class DrawnData(ActivationLikeData):
    """Activation-like rows drawn block by block where they are read (`probe_lab.data.drawn`): labels
    first, rows only for the blocks a process reads, so no machine holds all `n` rows."""

    source: DataSource = DataSource.drawn
    dtype: str = field(default="float16", metadata={"help": "float16, bfloat16 or float32"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype not in DRAWN_DTYPES:
            raise ProbeLabError(f"data.dtype must be one of {', '.join(DRAWN_DTYPES)}, got {self.dtype!r}")


DRAWN_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class SeedTaskData(DataSettings):
    """The seed guide's GPU-test task: `n` rows per class of width `dim`."""

    source: DataSource = DataSource.seed_task
    n: int = 2000
    dim: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_size(self.n, self.dim)


@dataclass
class LayeredData(DataSettings):
    """Sources whose activations may hold a layer axis (N×L×D): `layer` picks one."""

    # An index (negative from the end), or "all": one probe per layer (probe_lab.layers). Typed Any
    # because the config's types cannot say "an int or this word"; checked here instead.
    layer: Any = None  # type: ignore[assignment]  # a field here, a property on the base

    def __post_init__(self) -> None:
        super().__post_init__()
        index = isinstance(self.layer, int) and not isinstance(self.layer, bool)
        if self.layer is not None and self.layer != LAYER_ALL and not index:
            raise ProbeLabError(f"data.layer must be a layer index or {LAYER_ALL}, got {self.layer!r}")


@dataclass
class NpyData(LayeredData):
    """`x`: an .npy file of activations (N×D or N×L×D), memory-mapped; `y`: .npy or text 0/1 labels."""

    source: DataSource = DataSource.npy
    x: str | None = None
    y: str | None = None


@dataclass
class PtFilesData(LayeredData):
    """`dir`: one tensor file per sample; `labels`: a .npy or text file of 0/1 lines."""

    source: DataSource = DataSource.pt_files
    dir: str | None = None
    labels: str | None = None


@dataclass
class StoreData(LayeredData):
    """`path`: an activation store; `verify`: check each shard's checksum while scanning it once."""

    source: DataSource = DataSource.store
    path: str | None = None
    verify: bool = True


SCHEMAS: dict[DataSource, type[DataSettings]] = {
    DataSource.synthetic: SyntheticData,
    DataSource.drawn: DrawnData,
    DataSource.seed_task: SeedTaskData,
    DataSource.npy: NpyData,
    DataSource.pt_files: PtFilesData,
    DataSource.store: StoreData,
}


def _require_size(n: int, dim: int) -> None:
    """Generated data: at least one row (or row per class) and one dimension."""
    for name, value in (("n", n), ("dim", dim)):
        if value < 1:
            raise ProbeLabError(f"data.{name} must be >= 1, got {value}")


def check_split_fractions(validation_split: float, test_split: float) -> None:
    """validation in (0, 1), test in [0, 1), and something left to train on."""
    if not 0.0 < validation_split < 1.0:
        raise ProbeLabError(f"data.validation_split must be in (0, 1), got {validation_split}")
    if not 0.0 <= test_split < 1.0 or validation_split + test_split >= 1.0:
        raise ProbeLabError(
            f"data.validation_split={validation_split} and data.test_split={test_split} leave no training data"
        )


# "data.<field>" and "data=<source>" in the messages of the data settings and sources, not inside a path
_DATA_SETTING = re.compile(r"(?<![\w/\\.~-])data\.(?=[A-Za-z_])")
_DATA_SOURCE = re.compile(r"(?<![\w/\\.~-])data=(?=\w)")


@contextmanager
def renamed_data_settings(where: str) -> Iterator[None]:
    """A ProbeLabError raised inside names data settings given somewhere other than the `data` group
    (`datasets[k]`, `eval.control`): `data.n` becomes `<where>.n`, `data=npy` `<where>.source=npy`."""
    try:
        yield
    except ProbeLabError as err:
        text = _DATA_SOURCE.sub(f"{where}.source=", _DATA_SETTING.sub(f"{where}.", str(err)))
        raise ProbeLabError(text) from None
