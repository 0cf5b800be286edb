"""`python -m probe_lab.transfer`: a probe per dataset, every probe scored on every dataset's test split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_here, run_module
from hydra import compose, initialize_config_module
from matplotlib.figure import Figure

from probe_lab import metrics as metrics_lib
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import split_dataset
from probe_lab.data.synthetic import activation_like
from probe_lab.errors import ProbeLabError
from probe_lab.probe import load_probe
from probe_lab.report import plots
from probe_lab.report.transfer_matrix import TransferMatrix, transfer_lines
from probe_lab.settings.transfer import parse_datasets
from probe_lab.transfer import transfer_settings

QUIET = ("progress_bar=false", "backend=sklearn")


def test_a_transfer_stopped_by_sigterm_says_so_in_one_line_and_publishes_nothing(tmp_path: Path) -> None:
    datasets = "datasets=[{source:synthetic,n:2000,dim:16,seed:1,name:A},{source:synthetic,n:2000,dim:16,seed:2}]"
    stop = (  # tests/signal_callback.py: SIGTERM to this process after the second epoch's third batch
        "+callbacks.stop._target_=signal_callback.SignalAt",
        "+callbacks.stop.epoch=1",
        "+callbacks.stop.batch=2",
        "+callbacks.stop.signal=15",
        f"+callbacks.stop.once={tmp_path / 'signalled'}",
    )
    adamw = ("progress_bar=false", "backend=pytorch", "device=cpu", "probe.optimizer=adamw", "probe.batch_size=128")
    result = run_module(
        "probe_lab.transfer",
        *adamw,
        datasets,
        *stop,
        run_dir=tmp_path / "transfer",
        env={"PYTHONPATH": str(Path(__file__).parent)},
    )
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip() == "probe_lab.transfer: error: stopped by SIGTERM: run the same command again"
    assert (tmp_path / "signalled").exists()
    published = sorted(path.name for path in result.run_dir.iterdir())
    assert published == [".hydra", "error.txt", "transfer.log"], published


def test_transfer_matrix_of_three_datasets(tmp_path: Path, npy_data: tuple[Path, Path]) -> None:
    x_path, y_path = npy_data  # 600 × 32; default name "x", trained with the top-level seed (42)
    datasets = (
        "datasets=[{source:synthetic,n:400,dim:32,seed:1,name:A},{source:synthetic,n:400,dim:32,seed:2},"
        f"{{source:npy,x:{x_path},y:{y_path}}}]"
    )
    result = run_module("probe_lab.transfer", *QUIET, datasets, run_dir=tmp_path / "transfer")
    assert result.returncode == 0, result.stderr
    out = result.run_dir
    names = ["A", "synthetic_1", "x"]
    for name in names:
        for file in ("probe.safetensors", "probe.json", "metrics.json", "roc.png"):
            assert (out / f"train_{name}" / file).is_file()
    assert (out / "transfer.png").stat().st_size > 1000
    assert not list(out.glob(".staging*"))

    with open(out / "transfer.csv", newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header == ["trained_on", *names] and [row[0] for row in rows] == names
    auroc = [[float(cell) for cell in row[1:]] for row in rows]
    saved = json.loads((out / "transfer.json").read_text())
    assert saved["names"] == names and saved["auroc"] == auroc
    assert saved["n_test"] == [[80, 80, 120]] * 3 and len(saved["ap"]) == 3
    own = [json.loads((out / f"train_{name}" / "metrics.json").read_text())["test"] for name in names]
    assert [auroc[i][i] for i in range(3)] == [test["auroc"] for test in own]
    assert [saved["ap"][i][i] for i in range(3)] == [test["ap"] for test in own]

    probe_a, _ = load_probe(out / "train_A" / "probe.safetensors")
    x_b, y_b = activation_like(400, 32, seed=2)
    test_b = split_dataset(ActivationDataset(x_b, y_b), 0.2, 0.2, seed=2).test
    test_x = split_dataset(ActivationDataset(np.load(x_path), np.load(y_path)), 0.2, 0.2, seed=42).test
    assert test_b is not None and test_x is not None
    assert auroc[0][1] == metrics_lib.auroc(test_b.labels, probe_a.predict_proba(test_b))
    assert auroc[0][2] == metrics_lib.auroc(test_x.labels, probe_a.predict_proba(test_x))
    assert "best     " in result.stdout and str(out) in result.stdout

    # the probe the training app trains on the same data (run here, in this process) has the same test AUROC
    single = run_here(
        "backend=sklearn", "data=npy", f"data.x={x_path}", f"data.y={y_path}", run_dir=tmp_path / "single"
    )
    assert single.metrics()["test"]["auroc"] == auroc[2][2]


def test_a_dataset_of_another_width_is_refused_before_training(tmp_path: Path) -> None:
    datasets = "datasets=[{source:synthetic,n:200,dim:16,name:A},{source:synthetic,n:200,dim:8,name:B}]"
    result = run_module("probe_lab.transfer", *QUIET, datasets, run_dir=tmp_path / "transfer")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("probe_lab.transfer: error: datasets[1] (B) has 8 dims but datasets[0] (A) has 16")
    assert {path.name for path in result.run_dir.iterdir()} <= {".hydra", "transfer.log", "error.txt"}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "datasets is empty"),
        ([{"n": 4}], "datasets[0].source is required: one of synthetic,"),
        ([{"source": "synthetic"}, {"source": "foo"}], "datasets[1].source must be one of synthetic,"),
        (
            [{"source": "npy", "xx": "a.npy"}],
            "unknown setting datasets[0].xx for source npy (did you mean datasets[0].x?)",
        ),
        ([{"source": "synthetic", "n": "many"}], "invalid setting datasets[0].n: Value 'many'"),
        ([{"source": "synthetic", "n": 0}], "datasets[0].n must be >= 1"),
        ([{"source": "synthetic", "test_split": 0.0}], "datasets[0].test_split must be > 0"),
        ([{"source": "npy", "x": "a.npy", "layer": "all"}], "datasets[0].layer=all"),
        ([{"source": "synthetic", "name": "A"}, {"source": "seed_task", "name": "A"}], "datasets[1].name=A"),
        ([{"source": "synthetic", "name": "../up"}], "datasets[0].name must be"),
        ([{"source": "synthetic", "seed": -1}], "datasets[0].seed must be a non-negative integer"),
        (["a.npy"], "datasets[0] must be a mapping"),
    ],
)
def test_bad_datasets_name_the_setting(entries: list, message: str) -> None:
    with pytest.raises(ProbeLabError) as caught:
        parse_datasets(entries, seed=42)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_default_names_come_from_files_else_the_source_and_position() -> None:
    entries = [
        {"source": "npy", "x": "/a/acts.npy", "y": "/a/y.npy"},
        {"source": "npy", "x": "/b/acts.npy", "y": "/b/y.npy", "seed": 7},
        {"source": "synthetic"},
        {"source": "store", "path": "/stores/my store"},
        {"source": "seed_task", "name": "own"},
    ]
    datasets = parse_datasets(entries, seed=42)
    assert [d.name for d in datasets] == ["acts", "acts_1", "synthetic_2", "my_store", "own"]
    assert [d.seed for d in datasets] == [42, 7, 42, 42, 42]


def test_the_composed_config_keeps_every_group_of_the_training_app() -> None:
    overrides = ["backend=sklearn", "model=llama-2-7b", "probe.regularization=3", "datasets=[{source:synthetic}]"]
    with initialize_config_module("probe_lab.conf", version_base=None):
        cfg = compose("transfer", overrides=overrides)
    settings = transfer_settings(cfg)
    assert (settings.backend.name.value, settings.model.hidden_dim, settings.probe.regularization) == (
        "sklearn",
        4096,
        3.0,
    )
    assert settings.datasets == [{"source": "synthetic"}] and "_target_" in settings.trainer


def test_summary_of_a_single_dataset_has_no_best_transfer(tmp_path: Path) -> None:
    from probe_lab.settings.backend import BackendChoice

    matrix = TransferMatrix(["only"], [[0.9]], [[0.8]], [[0.85]], [[40]])
    assert matrix.best_transfer() is None and matrix.to_dict()["best_transfer"] is None
    lines = transfer_lines(matrix, BackendChoice("sklearn", "backend=sklearn set explicitly"), 32, tmp_path)
    assert any("0.9000*" in line for line in lines) and any("one dataset" in line for line in lines)


def test_plot_transfer_annotates_every_cell_and_outlines_the_diagonal(tmp_path: Path, monkeypatch) -> None:
    plots.plot_transfer(tmp_path / "transfer.png", ["a", "b"], [[0.9, 0.5], [0.4, 0.8]])
    assert (tmp_path / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    drawn: list[Figure] = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig))
    plots.plot_transfer(tmp_path / "unused.png", ["a", "b", "c"], np.full((3, 3), 0.5).tolist())
    ax = drawn[0].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("tested on", "trained on")
    assert len(ax.texts) == 9 and len(ax.patches) == 3 and len(drawn[0].axes) == 2  # the colour bar's axes
