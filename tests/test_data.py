"""Activation datasets, sources, splits and streaming statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from probe_lab.data.dataset import ActivationDataset, natural_sorted
from probe_lab.data.sources import DataConfig, DataSource, load_dataset
from probe_lab.data.splits import split_dataset
from probe_lab.data.stats import feature_moments
from probe_lab.data.synthetic import activation_like, seed_task
from probe_lab.errors import ProbeLabError


def test_array_and_file_datasets_read_the_same_rows(pt_dir) -> None:
    directory, labels, x, y = pt_dir
    from_files = load_dataset(DataConfig(source=DataSource.pt_files, dir=str(directory), labels=str(labels)), seed=0)
    from_array = ActivationDataset(x, y)
    rows = np.array([5, 0, 199, 17])
    np.testing.assert_array_equal(from_files.rows(rows), from_array.rows(rows))
    np.testing.assert_array_equal(from_files.labels, y)
    loader = DataLoader(from_files, batch_size=4, shuffle=False)  # the seed guide's usage
    batch_x, batch_y = next(iter(loader))
    assert batch_x.shape == (4, 16) and batch_x.dtype == torch.float32
    np.testing.assert_array_equal(batch_x.numpy(), x[:4])
    np.testing.assert_array_equal(batch_y.numpy(), y[:4].astype(np.float32))


def test_layer_is_picked_from_three_dimensional_arrays(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((50, 3, 8)).astype(np.float32)
    y = np.arange(50) % 2
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    config = DataConfig(source=DataSource.npy, x=str(tmp_path / "x.npy"), y=str(tmp_path / "y.npy"), layer=2)
    dataset = load_dataset(config, seed=0)
    assert dataset.dim == 8
    np.testing.assert_array_equal(dataset.materialize(), x[:, 2, :])
    with pytest.raises(ProbeLabError, match=r"set data\.layer"):
        load_dataset(DataConfig(source=DataSource.npy, x=config.x, y=config.y), seed=0)
    with pytest.raises(ProbeLabError, match="out of range"):
        load_dataset(DataConfig(source=DataSource.npy, x=config.x, y=config.y, layer=3), seed=0)


def test_per_sample_files_are_read_in_natural_order(tmp_path: Path) -> None:
    names = ["sample_10.pt", "sample_2.pt", "sample_1.pt"]
    assert [p.name for p in natural_sorted([tmp_path / n for n in names])] == [
        "sample_1.pt",
        "sample_2.pt",
        "sample_10.pt",
    ]


def test_subset_views_rows_without_copying() -> None:
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    dataset = ActivationDataset(x, np.arange(10) % 2)
    view = dataset.subset(np.array([7, 2]))
    np.testing.assert_array_equal(view.materialize(), x[[7, 2]])
    np.testing.assert_array_equal(view.labels, [1, 0])
    assert view.table is dataset.table


def test_splits_are_stratified_disjoint_and_seeded() -> None:
    x, y = activation_like(1000, 8, seed=1)
    dataset = ActivationDataset(x, y)
    splits = split_dataset(dataset, 0.2, 0.2, seed=3)
    again = split_dataset(dataset, 0.2, 0.2, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (600, 200, 200)
    ids = [tuple(map(tuple, part.materialize())) for part in (splits.train, splits.val, splits.test)]
    assert not set(ids[0]) & set(ids[1]) and not set(ids[1]) & set(ids[2])
    np.testing.assert_array_equal(splits.val.materialize(), again.val.materialize())
    for part in (splits.train, splits.val, splits.test):
        assert abs(part.labels.mean() - y.mean()) < 0.02


def test_moments_are_exact_for_features_with_a_large_mean() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((20000, 3)) * [1e-3, 1.0, 30.0] + [1e4, -5.0, 0.0]).astype(np.float32)
    mean, std = feature_moments(ActivationDataset(x, None))
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, x.astype(np.float64).std(0), rtol=1e-9)


def test_synthetic_data_looks_like_activations() -> None:
    x, y = activation_like(4000, 64, seed=0)
    std = x.std(0)
    assert std.max() / np.median(std) > 10  # outlier dimensions
    assert np.abs(x.mean(0)).mean() > 0.3  # mean far from zero
    assert 0.3 < y.mean() < 0.7


def test_seed_task_matches_the_seed_guide() -> None:
    x, y = seed_task(2000, 4096, seed=0)
    assert x.shape == (4000, 4096) and y.sum() == 2000
    assert (x[y == 1, 0] >= 3).all() and (x[y == 0, 0] <= -3).all()
    assert abs(x[:, 1:].std() - 1) < 0.01
