"""Activation datasets, sources, splits and streaming statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.sources import load_dataset
from probe_lab.data.splits import split_dataset
from probe_lab.data.stats import feature_moments
from probe_lab.data.synthetic import activation_like, seed_task
from probe_lab.data.tensor_files import natural_sorted
from probe_lab.errors import ProbeLabError
from probe_lab.settings.data import NpyData, PtFilesData


def test_array_and_file_datasets_read_the_same_rows(pt_dir) -> None:
    directory, labels, x, y = pt_dir
    from_files = load_dataset(PtFilesData(dir=str(directory), labels=str(labels)), seed=0)
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
    config = NpyData(x=str(tmp_path / "x.npy"), y=str(tmp_path / "y.npy"), layer=2)
    dataset = load_dataset(config, seed=0)
    assert dataset.dim == 8
    np.testing.assert_array_equal(dataset.materialize(), x[:, 2, :])
    with pytest.raises(ProbeLabError, match=r"set data\.layer"):
        load_dataset(NpyData(x=config.x, y=config.y), seed=0)
    with pytest.raises(ProbeLabError, match="out of range"):
        load_dataset(NpyData(x=config.x, y=config.y, layer=3), seed=0)


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
    mean, std = (m.numpy() for m in feature_moments(ActivationDataset(x, None)))
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


def test_device_table_reads_rows_layers_and_nonfinite_rows_where_it_lives() -> None:
    from probe_lab.data.tables import DeviceTable

    x = torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(5, 2, 3).to(torch.bfloat16)
    x[3, 1, 0] = float("nan")
    table = DeviceTable(x)
    assert (table.n_rows, table.layers, table.dim, table.dtype) == (5, 2, 3, torch.bfloat16)
    consecutive = table.read(np.array([1, 2, 3]), layer=1)
    assert torch.equal(consecutive[:2], x[1:3, 1]) and consecutive.data_ptr() == x[1, 1].data_ptr()  # a view
    assert torch.equal(table.read(np.array([0, 4]), layer=0), x[[0, 4], 0])
    assert torch.equal(table.read(np.array([0, 0, 2]), layer=0), x[[0, 0, 2], 0])  # repeats span 3 rows too
    np.testing.assert_array_equal(table.nonfinite[:, 1], [False, False, False, True, False])
    assert not table.nonfinite[:, 0].any()


def test_statistics_of_a_resident_tensor_match_the_streaming_pass() -> None:
    from probe_lab.data.stats import device_moments

    x, y = activation_like(5000, 32, seed=4, dtype=np.float16)
    mean, std = (m.numpy() for m in feature_moments(ActivationDataset(x, y)))
    resident_mean, resident_std = (m.numpy() for m in device_moments(torch.from_numpy(x), block_rows=777))
    np.testing.assert_allclose(resident_mean, mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(resident_std, std, rtol=1e-5)
    rows = np.round(np.linspace(0, len(x) - 1, 1234)).astype(int)  # 1234 evenly spaced rows
    sampled_mean, sampled_std = (m.numpy() for m in device_moments(torch.from_numpy(x), sample_rows=1234))
    np.testing.assert_allclose(sampled_std, x[rows].astype(np.float64).std(0), rtol=1e-6)
    np.testing.assert_allclose(sampled_mean, x[rows].astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)


def test_device_generator_draws_the_numpy_generators_distribution() -> None:
    from probe_lab.data.synthetic import activation_like_tensor

    x, y = activation_like(40000, 16, seed=5)
    xt, yt = activation_like_tensor(40000, 16, seed=5, device="cpu", dtype=torch.float32)
    assert xt.dtype == torch.float32 and yt.dtype == np.int64 and set(np.unique(yt)) == {0, 1}
    np.testing.assert_allclose(xt.numpy().std(0), x.std(0), rtol=0.05)
    np.testing.assert_allclose(xt.numpy().mean(0), x.mean(0), atol=0.05 * x.std(0).max())
    assert abs(yt.mean() - y.mean()) < 0.02


def test_a_dataset_on_the_cpu_goes_to_the_cpu_without_a_device_copy() -> None:
    x, y = activation_like(100, 8, seed=6, dtype=np.float16)
    dataset = ActivationDataset(x, y).subset(np.array([3, 1, 7]))
    assert dataset.device.type == "cpu"
    assert torch.equal(dataset.to_device("cpu"), torch.from_numpy(x[[3, 1, 7]]))
    moved = dataset.on_device("cpu")
    np.testing.assert_array_equal(moved.rows(np.arange(3)), x[[3, 1, 7]].astype(np.float32))
    np.testing.assert_array_equal(moved.labels, y[[3, 1, 7]])
