"""Where activations come from: `DataConfig` (the `data` config group's schema) → ActivationDataset.

Sources: `synthetic` and `seed_task` are generated in-process; `npy` memory-maps an .npy file of
shape N×D or N×L×D; `pt_files` reads a directory of per-sample tensor files lazily; `store` opens an
activation store (probe_lab.data.store), scanning it once for checksums and non-finite rows.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch

from probe_lab.data import synthetic
from probe_lab.data.dataset import ActivationDataset, check_labels, natural_sorted
from probe_lab.data.splits import check_split_fractions
from probe_lab.data.store import ActivationStore
from probe_lab.data.tables import map_npy
from probe_lab.errors import ProbeLabError

TENSOR_SUFFIXES = (".pt", ".pth")


class DataSource(StrEnum):
    synthetic = "synthetic"
    seed_task = "seed_task"
    npy = "npy"
    pt_files = "pt_files"
    store = "store"


@dataclass
class DataConfig:
    """Every source's settings in one schema; each source reads the fields it names."""

    source: DataSource = DataSource.synthetic
    # synthetic: rows and width; seed_task: rows per class (n) and width (dim)
    n: int = 4000
    dim: int = 256
    n_outliers: int = 4
    outlier_scale: float = 30.0
    signal: float = 3.0
    # npy: activations (N×D or N×L×D) and labels; pt_files: a directory and a labels file
    x: str | None = None
    y: str | None = None
    dir: str | None = None
    labels: str | None = None
    # store: the store's directory; verify: check each shard's checksum while scanning it
    path: str | None = None
    verify: bool = True
    layer: int | None = None
    validation_split: float = 0.2
    test_split: float = 0.2
    # Rows holding NaN or Inf fail the run with their count, unless dropped
    drop_nonfinite: bool = False
    # Streaming minibatches (optimizer=adamw): reader threads, MB per contiguous read, reads
    # shuffled together, batches each worker prefetches
    num_workers: int = 2
    read_mb: float = 16.0
    shuffle_reads: int = 4
    prefetch_batches: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.source, DataSource):
            self.source = DataSource(self.source)
        generated = self.source in (DataSource.synthetic, DataSource.seed_task)
        if generated:
            for name in ("n", "dim"):
                if getattr(self, name) < 1:
                    raise ProbeLabError(f"data.{name} must be >= 1, got {getattr(self, name)}")
            if self.n_outliers < 0 or self.outlier_scale <= 0:
                raise ProbeLabError("data.n_outliers must be >= 0 and data.outlier_scale > 0")
        check_split_fractions(self.validation_split, self.test_split)
        if self.num_workers < 0:
            raise ProbeLabError(f"data.num_workers must be >= 0, got {self.num_workers}")
        for name in ("read_mb", "shuffle_reads", "prefetch_batches"):
            if getattr(self, name) <= 0:
                raise ProbeLabError(f"data.{name} must be positive, got {getattr(self, name)}")
        used = {
            DataSource.npy: {"x", "y", "layer"},
            DataSource.pt_files: {"dir", "labels", "layer"},
            DataSource.store: {"path", "layer"},
        }
        for name in ("x", "y", "dir", "labels", "path", "layer"):
            if getattr(self, name) is not None and name not in used.get(self.source, set()):
                raise ProbeLabError(f"data.{name} is not used by data={self.source.value}")


def load_dataset(
    cfg: DataConfig,
    seed: int,
    *,
    require_labels: bool = True,
    progress: bool = False,
    hold_on: Callable[[int], torch.device | None] | None = None,
) -> ActivationDataset:
    """The activations (and labels) that `cfg` describes; files are validated, not yet read whole
    (a store is read once, by its scan).

    hold_on: given the data's size in bytes, the GPU that training will hold it on, if any; a store
    is then copied there by its scan (one read in all)."""
    if cfg.source is DataSource.synthetic:
        x, y = synthetic.activation_like(
            cfg.n, cfg.dim, seed, n_outliers=cfg.n_outliers, outlier_scale=cfg.outlier_scale, signal=cfg.signal
        )
        return ActivationDataset(x, y, name="data=synthetic")
    if cfg.source is DataSource.seed_task:
        x, y = synthetic.seed_task(cfg.n, cfg.dim, seed)
        return ActivationDataset(x, y, name="data=seed_task")
    if cfg.source is DataSource.npy:
        return _npy(cfg, require_labels)
    if cfg.source is DataSource.store:
        if cfg.path is None:
            raise ProbeLabError("data.path is required for data=store")
        store = ActivationStore.open(cfg.path)
        # Twice the store: it is held whole on the device until its splits are copied out of it.
        device = hold_on(2 * store.rows * store.dim * store.dtype.itemsize) if hold_on is not None else None
        return store.dataset(cfg.layer, verify=cfg.verify, progress=progress, device=device)
    return _pt_files(cfg, require_labels)


def _npy(cfg: DataConfig, require_labels: bool) -> ActivationDataset:
    x_path = _existing_file(cfg.x, "data.x")
    if zipfile.is_zipfile(x_path):
        raise ProbeLabError(f"data.x ({x_path}): expected one .npy array, got an .npz archive")
    try:
        x = map_npy(x_path)
    except (ValueError, OSError, EOFError) as err:
        raise ProbeLabError(f"data.x ({x_path}): not a readable .npy array ({str(err).splitlines()[0]})") from None
    labels = read_labels(cfg.y, "data.y", require_labels)
    return ActivationDataset(x, labels, layer=cfg.layer, name=f"data.x ({x_path})")


def _pt_files(cfg: DataConfig, require_labels: bool) -> ActivationDataset:
    if cfg.dir is None:
        raise ProbeLabError("data.dir is required for data=pt_files")
    directory = Path(cfg.dir)
    if not directory.is_dir():
        raise ProbeLabError(f"data.dir ({directory}): directory not found")
    paths = natural_sorted([p for p in directory.iterdir() if p.suffix in TENSOR_SUFFIXES])
    if not paths:
        raise ProbeLabError(f"data.dir ({directory}): no {' or '.join(TENSOR_SUFFIXES)} tensor files")
    labels = read_labels(cfg.labels, "data.labels", require_labels)
    return ActivationDataset(paths, labels, layer=cfg.layer, name=f"data.dir ({directory})")


def read_labels(path: str | None, setting: str, required: bool) -> np.ndarray | None:
    if path is None:
        if required:
            raise ProbeLabError(f"{setting} is required: a .npy or text file of 0/1 labels")
        return None
    file = _existing_file(path, setting)
    if file.suffix == ".npy":
        try:
            labels = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
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
