"""Where activations come from: a `data` setting (one schema per source) → `Source` → ActivationDataset.

Sources: `synthetic` and `seed_task` are generated in-process, `drawn` block by block where its rows
are read (`probe_lab.data.drawn`); `npy` memory-maps an .npy file of shape N×D or N×L×D; `pt_files`
reads a directory of per-sample tensor files lazily; `store` opens an activation store
(probe_lab.store), scanning it once for checksums and non-finite rows.

Opening a source reads no activations (a store's manifest and shard headers, an .npy header); the
run decides the placement from the opened source's size, then reads it where the placement says.
"""

from __future__ import annotations

import tokenize
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe_lab.data import synthetic
from probe_lab.data.dataset import ActivationDataset, check_labels
from probe_lab.data.drawn import DrawnTable
from probe_lab.data.tables import MappedFile, map_npy
from probe_lab.data.tensor_files import list_tensor_files, load_tensor_file, sample_shape
from probe_lab.errors import ProbeLabError
from probe_lab.settings.data import (
    DataSettings,
    DrawnData,
    NpyData,
    PtFilesData,
    SeedTaskData,
    StoreData,
    SyntheticData,
)
from probe_lab.settings.placement import SplitBytes
from probe_lab.store import ActivationStore


@dataclass
class Source:
    """Activations opened but not read whole: their size, and `read` to get the dataset.

    A store is read by its scan (checksums, NaN/Inf rows), which can copy a single-layer store onto a
    GPU as it reads (`read(onto=...)`); every other source is a dataset already, read lazily.
    """

    name: str
    rows: int
    dim: int
    dtype: torch.dtype  # the stored dtype of the rows
    dataset: ActivationDataset | None = None
    store: ActivationStore | None = None
    store_settings: StoreData | None = None
    progress: bool = False

    def split_bytes(self, validation_split: float, test_split: float) -> SplitBytes:
        """The sizes of its splits, for the placement decision."""
        copyable = self.store is not None and self.store.layers is None
        row_bytes = self.dim * self.dtype.itemsize
        return SplitBytes.of_rows(self.rows, row_bytes, validation_split, test_split, store=copyable)

    def read(self, onto: torch.device | None = None) -> ActivationDataset:
        """The dataset; a single-layer store scanned onto the GPU `onto` when given."""
        if self.dataset is not None:
            return self.dataset
        assert self.store is not None and self.store_settings is not None
        settings = self.store_settings
        return self.store.dataset(settings.layer, verify=settings.verify, progress=self.progress, device=onto)


def open_source(cfg: DataSettings, seed: int, *, require_labels: bool = True, progress: bool = False) -> Source:
    """The activations (and labels) that `cfg` describes, validated but not yet read whole."""
    if isinstance(cfg, StoreData):
        if cfg.path is None:
            raise ProbeLabError("data.path is required for data=store")
        store = ActivationStore.open(cfg.path)
        name = f"data.path ({store.path})"
        return Source(name, store.rows, store.dim, store.dtype, store=store, store_settings=cfg, progress=progress)
    dataset = _dataset(cfg, seed, require_labels)
    return Source(dataset.name, len(dataset), dataset.dim, dataset.storage_dtype, dataset=dataset)


def load_dataset(
    cfg: DataSettings, seed: int, *, require_labels: bool = True, progress: bool = False
) -> ActivationDataset:
    """The dataset `cfg` describes, read where it lives (a store by its scan, on the host)."""
    return open_source(cfg, seed, require_labels=require_labels, progress=progress).read()


def _dataset(cfg: DataSettings, seed: int, require_labels: bool) -> ActivationDataset:
    if isinstance(cfg, SyntheticData):
        x, y = synthetic.activation_like(
            cfg.n, cfg.dim, seed, n_outliers=cfg.n_outliers, outlier_scale=cfg.outlier_scale, signal=cfg.signal
        )
        return ActivationDataset(x, y, name="data=synthetic")
    if isinstance(cfg, DrawnData):
        table = DrawnTable(
            cfg.n,
            cfg.dim,
            seed,
            dtype=getattr(torch, cfg.dtype),
            n_outliers=cfg.n_outliers,
            outlier_scale=cfg.outlier_scale,
            signal=cfg.signal,
        )
        return ActivationDataset(table, table.labels, name="data=drawn")
    if isinstance(cfg, SeedTaskData):
        x, y = synthetic.seed_task(cfg.n, cfg.dim, seed)
        return ActivationDataset(x, y, name="data=seed_task")
    if isinstance(cfg, NpyData):
        return _npy(cfg, require_labels)
    if isinstance(cfg, PtFilesData):
        return _pt_files(cfg, require_labels)
    raise ProbeLabError(f"data={cfg.source.value} has no reader")


def layer_count(cfg: DataSettings) -> int | None:
    """How many layers each row of the source holds (L of N×L×D), None for N×D rows; reads headers
    (an .npy header, a store's manifest, the first tensor file) and no activations."""
    if isinstance(cfg, StoreData):
        if cfg.path is None:
            raise ProbeLabError("data.path is required for data=store")
        return ActivationStore.open(cfg.path).layers
    if isinstance(cfg, NpyData):
        shape = _npy_array(cfg)[1].shape
        return int(shape[1]) if len(shape) == 3 else None
    if isinstance(cfg, PtFilesData):
        paths = _pt_paths(cfg)
        shape = sample_shape(load_tensor_file(paths[0]), paths[0])
        return shape[0] if len(shape) == 2 else None
    return None


def every_layer_bytes(source: Source, cfg: DataSettings) -> int | None:
    """Bytes of every layer of a multi-layer store or .npy array (N×L×D) as held in memory (float64
    as float32, the dtype it is read in), from `source` (`cfg` opened) and headers only. None for a
    source whose layers are read one at a time (per-sample tensor files, N×D rows)."""
    if source.store is not None:
        return source.store.manifest.nbytes if source.store.layers is not None else None
    if isinstance(cfg, NpyData):
        x = _npy_array(cfg)[1]
        return int(np.prod(x.shape)) * min(x.dtype.itemsize, 4) if len(x.shape) == 3 else None
    return None


def read_every_layer(source: Source, cfg: DataSettings, *, progress: bool = False) -> list[Source]:
    """Each layer of a multi-layer store or .npy array (`source`, `cfg` opened) as a source already
    read: the whole N×L×D array is read once, in one pass (a store's by its scan, checksums and
    NaN/Inf rows included), into host memory that every layer's source reads from. Only for what
    `every_layer_bytes` sizes."""
    if source.store is not None:
        assert source.store_settings is not None
        datasets = source.store.layer_datasets(verify=source.store_settings.verify, progress=progress)
    else:
        assert isinstance(cfg, NpyData) and source.dataset is not None
        x_path, x = _npy_array(cfg)
        values = x.array() if isinstance(x, MappedFile) else x
        whole = np.array(values, dtype=np.float32 if values.dtype == np.float64 else values.dtype)  # one read
        labels = source.dataset.labels
        datasets = [
            ActivationDataset(whole, labels, layer=layer, name=f"data.x ({x_path})") for layer in range(whole.shape[1])
        ]
    return [Source(d.name, len(d), d.dim, d.storage_dtype, dataset=d) for d in datasets]


def _npy_array(cfg: NpyData) -> tuple[Path, MappedFile | np.ndarray]:
    """data.x's path and its array, mapped (not read)."""
    x_path = _existing_file(cfg.x, "data.x")
    if zipfile.is_zipfile(x_path):
        raise ProbeLabError(f"data.x ({x_path}): expected one .npy array, got an .npz archive")
    try:
        return x_path, map_npy(x_path)
    except (ValueError, OSError, EOFError) as err:
        raise ProbeLabError(f"data.x ({x_path}): not a readable .npy array ({str(err).splitlines()[0]})") from None


def _npy(cfg: NpyData, require_labels: bool) -> ActivationDataset:
    x_path, x = _npy_array(cfg)
    labels = read_labels(cfg.y, "data.y", require_labels)
    return ActivationDataset(x, labels, layer=cfg.layer, name=f"data.x ({x_path})")


def _pt_paths(cfg: PtFilesData) -> list[Path]:
    if cfg.dir is None:
        raise ProbeLabError("data.dir is required for data=pt_files")
    return list_tensor_files(Path(cfg.dir), f"data.dir ({Path(cfg.dir)})")


def _pt_files(cfg: PtFilesData, require_labels: bool) -> ActivationDataset:
    paths = _pt_paths(cfg)
    labels = read_labels(cfg.labels, "data.labels", require_labels)
    return ActivationDataset(paths, labels, layer=cfg.layer, name=f"data.dir ({Path(str(cfg.dir))})")


def read_labels(path: str | None, setting: str, required: bool) -> np.ndarray | None:
    if path is None:
        if required:
            raise ProbeLabError(f"{setting} is required: a .npy or text file of 0/1 labels")
        return None
    file = _existing_file(path, setting)
    if file.suffix == ".npy":
        try:
            labels = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as err:
            raise ProbeLabError(f"{setting} ({file}): not a readable .npy array ({str(err).splitlines()[0]})") from None
        if not isinstance(labels, np.ndarray):
            raise ProbeLabError(f"{setting} ({file}): expected one .npy array, got a {type(labels).__name__} archive")
    else:
        try:
            text = file.read_text()
        except (UnicodeDecodeError, OSError) as err:
            raise ProbeLabError(f"{setting} ({file}): not a .npy or a text file of 0/1 lines ({err})") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        bad = [line for line in lines if line not in ("0", "1")]
        if bad:
            raise ProbeLabError(f"{setting} ({file}): labels must be 0/1 lines, found {bad[0]!r}")
        labels = np.array([int(line) for line in lines], dtype=np.int64)
    return check_labels(labels, len(labels), f"{setting} ({file})")


def _existing_file(path: str | None, setting: str) -> Path:
    if path is None:
        raise ProbeLabError(f"{setting} is required")
    file = Path(path)
    if not file.is_file():
        raise ProbeLabError(f"{setting} ({file}): file not found")
    return file
