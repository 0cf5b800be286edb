"""Lightning's trainer / callbacks / logger config groups, composed from the command line as
lightning-hydra-template users expect, and the placement a run records."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_here

TESTS = Path(__file__).resolve().parent
SMALL = ("backend=pytorch", "device=cpu", "data.n=400", "data.dim=8")


def test_tensorboard_logger_writes_event_files_into_the_run_folder(cli) -> None:
    result = cli(*SMALL, "logger=tensorboard")
    assert result.returncode == 0, result.stderr
    events = list((result.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert not (result.run_dir / "logs").exists()  # csv is the default, replaced here
    assert "tensorboard/" in result.stdout


def test_several_loggers_at_once(cli) -> None:
    result = cli(*SMALL, "logger=[csv,tensorboard]")
    assert result.returncode == 0, result.stderr
    assert "val_auroc" in (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert list((result.run_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_a_callback_added_on_the_command_line_is_called_and_trainer_flags_reach_the_trainer(cli, tmp_path) -> None:
    record = tmp_path / "record.json"
    result = cli(
        *SMALL,
        "+callbacks.recorder._target_=recording_callback.Recorder",
        f"+callbacks.recorder.path={record}",
        "trainer.max_time=00:00:05:00",
        env={"PYTHONPATH": str(TESTS)},
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(record.read_text())
    assert seen["hooks"] == ["fit_start", "train_batch_end", "fit_end"]  # one full-batch L-BFGS step
    assert 250 < seen["time_remaining"] <= 300  # trainer.max_time=5 minutes became the Trainer's Timer
    assert {"ModelCheckpoint", "EarlyStopping", "Recorder", "Timer"} <= set(seen["callbacks"])
    assert not {"TQDMProgressBar", "PlainProgressBar"} & set(seen["callbacks"])  # progress_bar=false drops bars


def test_a_trainer_flag_changes_the_fit(tmp_path) -> None:
    """The flag composed into the trainer group reaches the fit (run in this process: what is checked is
    the fit the run records)."""
    result = run_here(*SMALL, "probe.optimizer=adamw", "probe.batch_size=80", "trainer.max_epochs=2", run_dir=tmp_path)
    fit = result.metrics()["fit"]
    assert (fit["epochs"], fit["optimizer_steps"]) == (2, 2 * 3)  # 240 training rows, 80 a batch


def test_a_callback_can_be_removed(cli) -> None:
    result = cli(*SMALL, "callbacks.model_checkpoint=null", "logger=none")
    assert result.returncode == 0, result.stderr
    assert not (result.run_dir / "logs").exists()
    assert not list(result.run_dir.rglob("best-*.ckpt"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("+trainer.accelerator=gpu",), "trainer.accelerator is decided by device="),
        (("+callbacks.broken.patience=3",), "callbacks.broken needs a _target_"),
        (("+callbacks.missing._target_=no_such_module.Callback",), "callbacks.missing (no_such_module.Callback)"),
        (("trainer._target_=collections.OrderedDict",), "is not a Lightning Trainer"),
    ],
)
def test_bad_lightning_settings_fail_with_one_line_before_the_data_are_read(
    cli, overrides: tuple[str, ...], message: str
) -> None:
    # the data file does not exist: the Lightning settings are refused first
    result = cli("backend=pytorch", "device=cpu", "data=npy", "data.x=absent.npy", *overrides)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "data.x" not in result.stderr
    assert not (result.run_dir / "probe.safetensors").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="checks the message without wandb")
def test_wandb_without_the_package_says_how_to_install_it(cli) -> None:
    result = cli(*SMALL, "logger=wandb")
    assert result.returncode == 2 and "logger.wandb" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("budget", "home", "optimizer"),
    [("null", "resident", "lbfgs"), ("1e-6", "streamed", "lbfgs"), ("null", "streamed", "adamw")],
)
def test_the_run_records_and_follows_its_placement(tmp_path, budget: str, home: str, optimizer: str) -> None:
    """What the run decides and records (run in this process)."""
    overrides = (f"device.memory_budget_gb={budget}", "probe.max_iterations=5", f"probe.optimizer={optimizer}")
    result = run_here(*SMALL, *overrides, run_dir=tmp_path / "run")
    metrics = result.metrics()
    assert metrics["placement"]["train"] == home and metrics["placement"]["device"] == "cpu"
    assert metrics["fit"]["optimizer"] == optimizer


def test_help_lists_the_lightning_groups(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "probe_lab", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    groups = {
        "trainer": ["*default"],
        "callbacks": ["*default", "none"],
        "logger": ["*csv", "none", "tensorboard", "wandb"],
    }
    for group, options in groups.items():
        start = next(i for i, line in enumerate(lines) if line.split()[:1] == [group])
        block = lines[start : start + len(options)]
        listed = [block[0].split()[1]] + [line.split()[0] for line in block[1:]]
        assert listed == options, block
