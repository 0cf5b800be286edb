"""What the training app's command line composes, and what it refuses: unknown keys with or without `+`,
data.layer on rows without a layer axis, and its --help and --version."""

from __future__ import annotations

import re
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CliResult, run_here, run_module
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from probe_lab.data.synthetic import activation_like
from probe_lab.errors import ProbeLabError
from probe_lab.settings.schema import PredictConfig, RunConfig, register_configs, to_settings, unknown_key

register_configs()

LR_MONITOR = "lightning.pytorch.callbacks.LearningRateMonitor"


def refusal(result: CliResult) -> str:
    """The one error line of a refused run (exit 2, no probe written), less its `probe_lab: error: `."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("probe_lab: error: "), result.stderr
    assert not (result.run_dir / "probe.safetensors").exists() and not (result.run_dir / "metrics.json").exists()
    return lines[0].removeprefix("probe_lab: error: ")


def composed(config_name: str, *overrides: str) -> DictConfig:
    with initialize_config_module("probe_lab.conf", version_base=None):
        return compose(config_name, overrides=list(overrides))


# -- unknown keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+probe.regularisation=10", "unknown setting probe.regularisation (did you mean probe.regularization?)"),
        ("+data.foo=1", "unknown setting data.foo ("),
        ("+foo=1", "unknown setting foo ("),
    ],
)
def test_an_unknown_key_added_with_plus_is_refused(cli_once, override: str, expected: str) -> None:
    line = refusal(cli_once(override, "data.n=200"))
    assert line.startswith(expected), line


def test_the_exact_line_for_a_misspelt_setting(cli_once) -> None:
    # the command of the first case above: run once, each test checks its own things about it
    result = cli_once("+probe.regularisation=10", "data.n=200")
    assert result.stderr.strip() == (
        "probe_lab: error: unknown setting probe.regularisation (did you mean probe.regularization?)"
    )
    assert result.returncode == 2 and not (result.run_dir / "probe.safetensors").exists()


def test_an_unknown_key_without_plus_is_refused_by_hydra(cli) -> None:
    result = cli("probe.regularisation=10", "data.n=200")
    assert result.returncode != 0 and "probe.regularisation" in result.stderr
    assert "Traceback" not in result.stderr and not (result.run_dir / "probe.safetensors").exists()


@pytest.mark.parametrize(
    ("config_name", "overrides", "expected"),
    [
        ("config", (), None),
        ("config", ("+trainer.max_time=00:00:01:00",), None),  # trainer, callbacks, logger are open
        ("config", (f"+callbacks.lr_monitor._target_={LR_MONITOR}",), None),
        ("config", ("+logger.csv.flush_logs_every_n_steps=10",), None),
        ("config", ("+probe.regularisation=10",), "unknown setting probe.regularisation (did you mean "),
        ("config", ("+data.foo=1",), "unknown setting data.foo (known: "),
        ("config", ("data=npy", "+data.n=5"), "unknown setting data.n ("),  # synthetic's field, not npy's
        ("config", ("+foo=1",), "unknown setting foo (known: "),
        (
            "predict",
            ("+allow_other_layers=true",),
            "unknown setting allow_other_layers (did you mean allow_other_layer?)",
        ),
    ],
)
def test_unknown_key_of_a_composed_config(config_name: str, overrides: tuple[str, ...], expected: str | None) -> None:
    cfg = composed(config_name, *overrides)
    found = unknown_key(cfg)
    schema = RunConfig if config_name == "config" else PredictConfig
    if expected is None:
        assert found is None
        return
    assert found is not None and found.startswith(expected), found
    with pytest.raises(ProbeLabError) as caught:
        to_settings(cfg, schema)
    assert str(caught.value) == found


def test_additions_to_open_groups_reach_the_settings() -> None:
    cfg = composed("config", f"+callbacks.lr_monitor._target_={LR_MONITOR}", "+trainer.max_time=00:00:01:00")
    settings = to_settings(cfg, RunConfig)
    assert settings.callbacks["lr_monitor"]["_target_"] == LR_MONITOR
    assert settings.trainer["max_time"] == "00:00:01:00"


def test_a_trainer_flag_added_with_plus_runs(tmp_path: Path) -> None:
    """The run composed with the flag trains with it and records it (run in this process)."""
    flags = ("backend=pytorch", "device=cpu", "data.n=300", "data.dim=8", "+trainer.max_time=00:00:01:00")
    result = run_here(*flags, run_dir=tmp_path / "run")
    assert result.probe_json()["config"]["trainer"]["max_time"] == "00:00:01:00"


def test_an_unknown_key_fails_its_sweep_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_module(
        "probe_lab",
        "-m",
        "progress_bar=false",
        "+probe.regularisation=10",
        "data.n=200",
        f"hydra.sweep.dir={sweep}",
        run_dir=tmp_path / "run",
    )
    error = (sweep / "0" / "error.txt").read_text().splitlines()
    assert error[0] == "unknown setting probe.regularisation (did you mean probe.regularization?)"
    assert not (sweep / "0" / "probe.safetensors").exists()


# -- data.layer on rows without a layer axis ---------------------------------------------------------


def test_data_layer_on_nxd_npy_is_refused(cli, npy_data: tuple[Path, Path]) -> None:
    x_path, y_path = npy_data
    line = refusal(cli("data=npy", f"data.x={x_path}", f"data.y={y_path}", "data.layer=0"))
    assert "data.layer=0" in line and "without a layer axis" in line and x_path.name in line, line


def test_data_layer_on_vector_tensor_files_is_refused(cli, pt_dir: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    directory, labels, _, _ = pt_dir
    line = refusal(cli("data=pt_files", f"data.dir={directory}", f"data.labels={labels}", "data.layer=0"))
    assert "data.layer=0" in line and "without a layer axis" in line and "sample_0.pt" in line, line


def test_data_layer_0_on_layered_npy_trains_on_layer_0(tmp_path: Path) -> None:
    """data.layer=0, which is falsy, picks layer 0 (the runs here are run in this process)."""
    x, y = activation_like(400, 16, seed=4, signal=10.0)
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    np.save(tmp_path / "layers.npy", np.stack([x, noise], axis=1))
    np.save(tmp_path / "labels.npy", y)
    data = ("data=npy", f"data.x={tmp_path / 'layers.npy'}", f"data.y={tmp_path / 'labels.npy'}")
    result = run_here(*data, "data.layer=0", "probe.regularization=0.1", run_dir=tmp_path / "run")
    assert result.metrics()["layer"] == 0 and result.probe_json()["layer"] == 0
    assert result.metrics()["test"]["auroc"] > 0.85  # the labels are in layer 0, not in the noise of layer 1


def test_data_layer_0_on_layered_tensor_files_trains(tmp_path: Path) -> None:
    rows = np.random.default_rng(1).standard_normal((120, 2, 8)).astype(np.float32)
    labels = (rows[:, 0, 0] > 0).astype(np.int64)
    directory = tmp_path / "layered"
    directory.mkdir()
    for i, row in enumerate(rows):
        torch.save(torch.from_numpy(row.copy()), directory / f"sample_{i}.pt")
    np.save(tmp_path / "labels.npy", labels)
    result = run_here(
        "data=pt_files",
        f"data.dir={directory}",
        f"data.labels={tmp_path / 'labels.npy'}",
        "data.layer=0",
        "probe.regularization=0.1",
        run_dir=tmp_path / "run",
    )
    assert result.metrics()["layer"] == 0 and result.metrics()["test"]["auroc"] > 0.9


# -- --help and --version ---------------------------------------------------------------------------

GROUPS = (
    "backend",
    "device",
    "data",
    "precision",
    "model",
    "probe",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "hydra/launcher",
    "hydra/sweeper",
)
OPTION_LINE = re.compile(r"^  (?P<group>[\w/]+)?\s+\*?(?P<option>[\w.-]+)\s+(?P<description>\S.*)$")


def option_descriptions(help_text: str) -> dict[tuple[str, str], str]:
    """{(group, option): description} from the help's group sections (a group's name is on the line of
    its first option only)."""
    found: dict[tuple[str, str], str] = {}
    section = False
    group = ""
    for line in help_text.splitlines():
        if line.startswith(("Config groups", "Sweeps and launchers")):
            section = True
            continue
        if not line.strip():
            section = False
        match = OPTION_LINE.match(line) if section else None
        if match:
            group = match["group"] or group
            assert (group, match["option"]) not in found, f"{group}={match['option']} listed twice"
            found[group, match["option"]] = match["description"]
    return found


def conf_options(group: str) -> list[str]:
    folder = resources.files("probe_lab.conf").joinpath(group)
    return [entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml")]


@pytest.fixture(scope="module")
def training_help(tmp_path_factory: pytest.TempPathFactory) -> str:
    result = run_module("probe_lab", "--help", run_dir=tmp_path_factory.mktemp("help") / "run")
    assert result.returncode == 0, result.stderr
    assert not (result.run_dir / "probe.safetensors").exists()
    return result.stdout


def test_help_lists_every_option_of_every_group_with_a_description(training_help: str) -> None:
    listed = option_descriptions(training_help)
    for group in GROUPS:
        options = conf_options(group)
        assert options, group
        for option in options:
            assert listed.get((group, option)), f"{group}={option} has no line with a description"
    assert "TensorBoard" in listed["logger", "tensorboard"]
    assert {"parallel", "slurm"} <= {option for group, option in listed if group == "hydra/launcher"}


def test_help_describes_each_setting(training_help: str) -> None:
    match = re.search(r"^  probe\.regularization=100\.0\s+(\S.*)$", training_help, re.MULTILINE)
    assert match and "regularization" in match[1], training_help
    for setting in ("seed=42", "data.validation_split=0.2", "model.size_b=7.0", "backend.threshold_b=34.0"):
        assert re.search(rf"^  {re.escape(setting)}\s+\S", training_help, re.MULTILINE), setting
    assert not re.search(r"^  data\.x=", training_help, re.MULTILINE)  # data=synthetic has no data.x


def test_help_names_the_other_entry_points(training_help: str) -> None:
    for command in ("probe_lab.predict", "probe_lab.convert", "probe_lab.extract"):
        assert f"python -m {command}" in training_help


def test_help_follows_the_overrides_given(cli) -> None:
    result = cli("data=npy", "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^  data\.x=\S*\s+\S", result.stdout, re.MULTILINE), result.stdout
    assert not re.search(r"^  data\.n=", result.stdout, re.MULTILINE)


def test_version(cli) -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"probe_lab {metadata.version('probe-lab')}"
