"""`python -m probe_lab` end to end, in a subprocess with hydra.run.dir in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CliResult, run_here, run_module, write_npy_data
from safetensors.numpy import load_file

from probe_lab.data.synthetic import activation_like
from probe_lab.probe import load_probe

METRIC_KEYS = {"backend", "backend_reason", "n_train", "n_val", "n_test", "input_dim", "fit_seconds", "threshold"}


def test_default_run_writes_every_artifact(cli) -> None:
    result = cli()
    assert result.returncode == 0, result.stderr
    metrics = result.metrics()
    assert set(metrics) >= METRIC_KEYS
    assert set(metrics["val"]) == {"auroc", "ap", "accuracy"}
    assert set(metrics["test"]) == {"auroc", "ap", "accuracy", "recall_at_1pct_fpr"}
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"], metrics["input_dim"]) == (2400, 800, 800, 256)
    # backend=auto with the default model (7B) resolves to sklearn
    assert metrics["backend"] == "sklearn" and metrics["fit"]["converged"]
    assert metrics["backend_reason"] == "model.size_b=7 < backend.threshold_b=34"
    assert 0.75 < metrics["test"]["auroc"] < 1.0  # planted direction plus label noise: learnable, not perfect
    assert (result.run_dir / "probe.safetensors").stat().st_mode & 0o777 == 0o644  # shareable like the rest
    tensors = load_file(result.run_dir / "probe.safetensors")
    assert tensors["weight"].shape == (256,) and tensors["weight"].dtype == np.float32
    assert tensors["bias"].shape == (1,) and tensors["bias"].dtype == np.float32
    probe_json = result.probe_json()
    assert {"format_version", "input_dim", "layer", "backend", "threshold", "metrics", "config"} <= set(probe_json)
    assert probe_json["config"]["probe"]["regularization"] == 100.0
    assert (result.run_dir / "roc.png").stat().st_size > 1000
    assert "test     AUROC" in result.stdout and str(result.run_dir) in result.stdout
    assert not list(result.run_dir.glob(".staging*"))


@pytest.mark.parametrize(
    ("overrides", "backend", "reason"),
    [
        (("backend=auto", "model.size_b=70"), "pytorch", "model.size_b=70 >= backend.threshold_b=34"),
        (("backend=sklearn", "model=llama-3-70b", "model.hidden_dim=32"), "sklearn", "backend=sklearn set explicitly"),
        # the run test_pytorch_run_keeps_lightning_logs_and_checkpoint checks too
        (("backend=pytorch", "model.size_b=7", "device=cpu"), "pytorch", "backend=pytorch set explicitly"),
    ],
)
def test_backend_resolution_is_recorded(cli_once, overrides: tuple[str, ...], backend: str, reason: str) -> None:
    result = cli_once(*overrides, "data.n=600", "data.dim=32")
    assert result.returncode == 0, result.stderr
    metrics = result.metrics()
    assert (metrics["backend"], metrics["backend_reason"]) == (backend, reason)
    assert result.stdout.startswith(f"probe_lab: {backend} backend ({reason})")
    assert f"fit      {backend} backend ({reason})" in (result.run_dir / "probe_lab.log").read_text()


def test_pytorch_run_keeps_lightning_logs_and_checkpoint(cli_once) -> None:
    result = cli_once("backend=pytorch", "model.size_b=7", "device=cpu", "data.n=600", "data.dim=32")
    assert result.returncode == 0, result.stderr
    log = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()
    assert "train_loss" in log[0] and "val_auroc" in log[0] and len(log) >= 3
    assert len(list((result.run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    metrics = result.metrics()
    assert metrics["fit"]["optimizer"] == "lbfgs" and metrics["fit"]["converged"]
    assert metrics["device"] == "cpu" and metrics["precision"] == "32"


@pytest.mark.parametrize("backend", ["sklearn", "pytorch"])
def test_seed_task_is_solved_by_both_backends(tmp_path: Path, backend: str) -> None:
    """The seed's own trainer reached test AUROC 0.72 on this task. (What the run computes: in this
    process, as `python -m probe_lab data=seed_task backend=...` composes and runs it.)"""
    result = run_here("data=seed_task", f"backend={backend}", run_dir=tmp_path / "run")
    metrics = result.metrics()
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"], metrics["input_dim"]) == (2400, 800, 800, 4096)
    assert metrics["test"]["auroc"] >= 0.999


def test_backends_agree_on_synthetic_data(tmp_path: Path) -> None:
    """Numerical agreement of the two backends' runs (in this process, composed as the command line
    composes `backend=... seed=7`)."""
    runs = {
        backend: run_here(f"backend={backend}", "seed=7", run_dir=tmp_path / backend)
        for backend in ("sklearn", "pytorch")
    }
    sk, pt = (runs[b].metrics() for b in ("sklearn", "pytorch"))
    assert abs(sk["test"]["auroc"] - pt["test"]["auroc"]) <= 0.002
    w_sk, _ = load_probe(runs["sklearn"].run_dir / "probe.safetensors")
    w_pt, _ = load_probe(runs["pytorch"].run_dir / "probe.safetensors")
    cosine = w_sk.weight @ w_pt.weight / np.linalg.norm(w_sk.weight) / np.linalg.norm(w_pt.weight)
    assert cosine >= 0.999


@pytest.fixture(scope="module")
def trained_on_npy(tmp_path_factory: pytest.TempPathFactory) -> tuple[CliResult, Path, Path]:
    """(the run of `python -m probe_lab data=npy ... backend=pytorch`, x.npy, y.npy) on the rows of the
    npy_data fixture (600 × 32), trained once for the predict tests below."""
    folder = tmp_path_factory.mktemp("trained_on_npy")
    x_path, y_path = write_npy_data(folder)
    overrides = ("progress_bar=false", "data=npy", f"data.x={x_path}", f"data.y={y_path}", "backend=pytorch")
    train = run_module("probe_lab", *overrides, run_dir=folder / "train")
    assert train.returncode == 0, train.stderr
    return train, x_path, y_path


def test_run_artifacts_reload_to_the_same_predictions(cli, trained_on_npy) -> None:
    train, x_path, y_path = trained_on_npy
    scored = cli(
        f"probe={train.run_dir}", "data=npy", f"data.x={x_path}", f"data.y={y_path}", module="probe_lab.predict"
    )
    assert scored.returncode == 0, scored.stderr
    weights, _ = load_probe(train.run_dir / "probe.safetensors")
    np.testing.assert_array_equal(np.load(scored.run_dir / "scores.npy"), weights.predict_proba(np.load(x_path)))
    csv = (scored.run_dir / "scores.csv").read_text().splitlines()
    assert csv[0] == "row,logit,probability,prediction" and len(csv) == 601
    predicted = json.loads((scored.run_dir / "metrics.json").read_text())
    assert predicted["threshold"] == train.metrics()["threshold"]
    assert 0.5 < predicted["metrics"]["auroc"] <= 1.0


def test_predict_without_labels_writes_scores_only(cli, trained_on_npy) -> None:
    train, x_path, _ = trained_on_npy
    scored = cli(f"probe={train.run_dir / 'probe.safetensors'}", f"data.x={x_path}", module="probe_lab.predict")
    assert scored.returncode == 0, scored.stderr
    assert (scored.run_dir / "scores.npy").is_file() and not (scored.run_dir / "metrics.json").exists()


def test_pt_files_and_npy_give_the_same_probe(pt_dir, tmp_path) -> None:
    """The two sources read the same rows into the same run (in this process)."""
    directory, labels, x, y = pt_dir
    np.save(tmp_path / "px.npy", x)
    np.save(tmp_path / "py.npy", y)
    from_files = run_here("data=pt_files", f"data.dir={directory}", f"data.labels={labels}", run_dir=tmp_path / "a")
    from_npy = run_here(
        "data=npy", f"data.x={tmp_path / 'px.npy'}", f"data.y={tmp_path / 'py.npy'}", run_dir=tmp_path / "b"
    )
    assert from_files.metrics()["test"] == from_npy.metrics()["test"]


def test_multi_layer_npy_uses_the_chosen_layer(tmp_path) -> None:
    """The layer the run trains on and records (in this process)."""
    x, y = activation_like(500, 16, seed=4)
    stacked = np.stack([np.random.default_rng(0).standard_normal(x.shape).astype(np.float32), x], axis=1)
    np.save(tmp_path / "layers.npy", stacked)
    np.save(tmp_path / "labels.npy", y)
    data = ("data=npy", f"data.x={tmp_path / 'layers.npy'}", f"data.y={tmp_path / 'labels.npy'}")
    result = run_here(*data, "data.layer=1", run_dir=tmp_path / "run")
    assert result.metrics()["layer"] == 1 and result.probe_json()["layer"] == 1
    assert result.metrics()["test"]["auroc"] > 0.7


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on machines without CUDA")
def test_cuda_request_without_gpu_falls_back_with_a_warning(cli) -> None:
    result = cli("device=cuda", "backend=pytorch", "data.n=400", "data.dim=8")
    assert result.returncode == 0, result.stderr
    assert result.metrics()["device"] == "cpu"
    assert (result.stdout + result.stderr).count("no CUDA device is available") == 1
