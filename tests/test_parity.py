"""Backend parity (experiment=parity and backend sweeps) and layer sweeps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sweep import SMALL, run_sweep

from probe_lab.data.sources import load_dataset
from probe_lab.data.splits import split_dataset
from probe_lab.data.synthetic import activation_like
from probe_lab.errors import ProbeLabError
from probe_lab.metrics import auroc
from probe_lab.probe import ProbeWeights, load_probe
from probe_lab.report.parity import BackendOutcome, compare
from probe_lab.report.summary import parity_lines
from probe_lab.settings.data import SyntheticData

COMPARISON_KEYS = {"abs_delta_test_auroc", "weight_cosine", "test_score_pearson", "max_abs_delta_probability"}


def outcome(backend: str, weight: list[float], test_proba: list[float], val: float, test: float) -> BackendOutcome:
    probe = ProbeWeights(np.array(weight, dtype=np.float32), 0.0)
    return BackendOutcome(backend, probe, np.array(test_proba), val, test, fit_seconds=len(backend) / 4)


def test_compare_gives_each_backends_numbers_and_how_far_apart_they_are() -> None:
    a = outcome("sklearn", [1.0, 0.0], [0.1, 0.5, 0.9], val=0.9, test=0.8)
    b = outcome("pytorch", [1.0, 1.0], [0.15, 0.35, 0.55], val=0.85, test=0.75)  # 0.5 * a's + 0.1
    numbers = compare(a, b)
    assert numbers["sklearn"] == {"val_auroc": 0.9, "test_auroc": 0.8, "fit_seconds": 1.75}
    assert numbers["pytorch"] == {"val_auroc": 0.85, "test_auroc": 0.75, "fit_seconds": 1.75}
    assert set(numbers) == {"sklearn", "pytorch", *COMPARISON_KEYS}
    assert numbers["abs_delta_test_auroc"] == pytest.approx(0.05)
    assert numbers["weight_cosine"] == pytest.approx(2**-0.5)
    assert numbers["test_score_pearson"] == pytest.approx(1.0)
    assert numbers["max_abs_delta_probability"] == pytest.approx(0.35)
    assert parity_lines(numbers) == [
        "  sklearn  val AUROC 0.9000  test AUROC 0.8000  fit 1.750 s",
        "  pytorch  val AUROC 0.8500  test AUROC 0.7500  fit 1.750 s",
        "  parity   |Δ test AUROC| 0.0500  weight cosine 0.707107  test score Pearson 1.000000  max |Δ p| 0.3500",
    ]


def test_compare_refuses_probabilities_of_different_test_splits() -> None:
    a = outcome("sklearn", [1.0], [0.1, 0.9], val=0.9, test=0.8)
    b = outcome("pytorch", [1.0], [0.1, 0.5, 0.9], val=0.9, test=0.8)
    with pytest.raises(ProbeLabError, match=r"^sklearn and pytorch were scored on different test splits$"):
        compare(a, b)


# experiment=parity on the CPU, as the backend sweep below is run. Without CUDA, device=auto is the CPU:
# the same run, which test_parity_numbers_are_those_of_the_saved_probes checks too; with CUDA that test
# runs the experiment on the GPU.
CPU_PARITY = ("experiment=parity", "device=cpu", *SMALL)
DEFAULT_DEVICE_PARITY = ("experiment=parity", *SMALL) if torch.cuda.is_available() else CPU_PARITY


def test_parity_numbers_are_those_of_the_saved_probes(cli_once) -> None:
    result = cli_once(*DEFAULT_DEVICE_PARITY)
    assert result.returncode == 0, result.stderr
    parity = json.loads((result.run_dir / "parity.json").read_text())
    splits = split_dataset(load_dataset(SyntheticData(n=400, dim=16), seed=42), 0.2, 0.2, seed=42)
    weights, proba = {}, {}
    for backend in ("sklearn", "pytorch"):
        probe, _ = load_probe(result.run_dir / backend / "probe.safetensors")
        weights[backend], proba[backend] = probe.weight.astype(np.float64), probe.predict_proba(splits.test)
        np.testing.assert_allclose(np.load(result.run_dir / backend / "test_scores.npy"), proba[backend], rtol=1e-6)
        assert parity[backend]["test_auroc"] == pytest.approx(auroc(splits.test.labels, proba[backend]), abs=1e-9)
        assert json.loads((result.run_dir / backend / "metrics.json").read_text())["backend"] == backend
    a, b = weights["sklearn"], weights["pytorch"]
    assert parity["weight_cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-9)
    assert parity["test_score_pearson"] == pytest.approx(np.corrcoef(proba["sklearn"], proba["pytorch"])[0, 1])
    delta = np.abs(proba["sklearn"] - proba["pytorch"]).max()
    assert parity["max_abs_delta_probability"] == pytest.approx(delta, abs=1e-6)
    delta_auroc = abs(parity["sklearn"]["test_auroc"] - parity["pytorch"]["test_auroc"])
    assert parity["abs_delta_test_auroc"] == pytest.approx(delta_auroc)
    # ...and the backends agree.
    assert parity["abs_delta_test_auroc"] <= 0.002 and parity["weight_cosine"] > 0.999
    assert (result.run_dir / "parity.png").stat().st_size > 1000
    assert re.search(r"^  parity   \|Δ test AUROC\| 0\.00\d\d  weight cosine (0\.99|1\.00)", result.stdout, re.M)


def test_a_backend_sweep_has_a_row_per_backend_and_the_parity_experiments_numbers(cli_once, tmp_path: Path) -> None:
    sweep = run_sweep(tmp_path, "backend=sklearn,pytorch", "device=cpu")
    assert sweep.returncode == 0, sweep.stderr
    rows = sweep.rows()  # a row per backend, each with its job's numbers
    assert [(row["backend"], row["status"]) for row in rows] == [("sklearn", "completed"), ("pytorch", "completed")]
    for row in rows:
        assert f"backend={row['backend']}" in row["overrides"].split()
        assert float(row["val_auroc"]) == sweep.metrics(row["job"])["val"]["auroc"]
    (pair,) = json.loads((sweep.sweep_dir / "parity.json").read_text())
    assert pair["jobs"] == ["0", "1"]
    assert set(pair) == {"overrides", "jobs", "sklearn", "pytorch", *COMPARISON_KEYS}
    experiment = cli_once(*CPU_PARITY)
    assert experiment.returncode == 0, experiment.stderr
    parity = json.loads((experiment.run_dir / "parity.json").read_text())
    for key in COMPARISON_KEYS:
        assert pair[key] == pytest.approx(parity[key], abs=1e-6), key
    for backend in ("sklearn", "pytorch"):
        assert pair[backend]["test_auroc"] == pytest.approx(parity[backend]["test_auroc"], abs=1e-9)
    assert "## Backend parity" in (sweep.sweep_dir / "summary.md").read_text()
    assert "  parity   jobs 0 and 1" in sweep.stdout


def test_a_layer_sweep_compares_layers(tmp_path: Path) -> None:
    x, y = activation_like(400, 16, seed=8)
    noise = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    np.save(tmp_path / "x.npy", np.stack([noise, x, noise[::-1]], axis=1))
    np.save(tmp_path / "y.npy", y)
    data = ("data=npy", f"data.x={tmp_path / 'x.npy'}", f"data.y={tmp_path / 'y.npy'}")
    sweep = run_sweep(tmp_path, "data.layer=0,1,2", data=data)
    assert sweep.returncode == 0, sweep.stderr
    rows = sweep.rows()
    assert [row["overrides"].split()[-1] for row in rows] == ["data.layer=0", "data.layer=1", "data.layer=2"]
    aurocs = [float(row["test_auroc"]) for row in rows]
    assert aurocs[1] > max(aurocs[0], aurocs[2]) + 0.1  # only layer 1 carries the signal
    assert [sweep.metrics(row["job"])["layer"] for row in rows] == [0, 1, 2]
    assert re.search(r"^  best +job 1 \(data.layer=1\)", sweep.stdout, re.MULTILINE)
    assert (sweep.sweep_dir / "sweep.png").stat().st_size > 1000


def test_a_sweep_of_parity_experiments_reports_each_comparison(tmp_path: Path) -> None:
    sweep = run_sweep(tmp_path, "experiment=parity", "device=cpu", "probe.regularization=1,100")
    assert sweep.returncode == 0, sweep.stderr
    rows = sweep.rows()
    assert [(row["status"], row["backend"]) for row in rows] == [("completed", "sklearn+pytorch")] * 2
    pairs = json.loads((sweep.sweep_dir / "parity.json").read_text())
    for row, pair in zip(rows, pairs, strict=True):
        own = json.loads((sweep.sweep_dir / row["job"] / "parity.json").read_text())
        assert pair["jobs"] == [row["job"]] and pair["weight_cosine"] == own["weight_cosine"]
        assert set(pair) == {"overrides", "jobs", "sklearn", "pytorch", *COMPARISON_KEYS}  # not the job's id
        assert float(row["val_auroc"]) == max(own["sklearn"]["val_auroc"], own["pytorch"]["val_auroc"])
    assert "  parity   job 1 (probe.regularization=100):" in sweep.stdout
