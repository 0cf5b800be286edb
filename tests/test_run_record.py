"""What a run leaves behind about itself: its log file (each stage, kept off the terminal), error.txt when it
fails, and one warning line naming the settings it chose but could not use."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CliResult, run_module

IGNORED = "settings without effect, ignored:"
RUN_LOG = "[probe_lab.run_log]"
STAGES = ("backend", "data", "placement", "read", "fit")


def run_log_messages(result: CliResult) -> list[str]:
    """The messages of the run log's records in <run folder>/probe_lab.log, without their prefix."""
    lines = (result.run_dir / "probe_lab.log").read_text().splitlines()
    return [line.split("] - ", 1)[1] for line in lines if RUN_LOG in line]


def ignored_lines(result: CliResult) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if IGNORED in line]


# -- a successful run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> CliResult:
    """The default config (sklearn, synthetic data), smaller."""
    result = run_module(
        "probe_lab", "progress_bar=false", "data.n=300", "data.dim=8", run_dir=tmp_path_factory.mktemp("ok") / "run"
    )
    assert result.returncode == 0, result.stderr
    return result


def test_the_log_holds_each_stage_and_the_summary(default_run: CliResult) -> None:
    messages = run_log_messages(default_run)
    for stage in STAGES:
        assert any(message.startswith(stage) for message in messages), f"no {stage} line in {messages}"
    outputs = [message for message in messages if message.strip().startswith("outputs")]
    assert len(outputs) == 1 and str(default_run.run_dir) in outputs[0], messages
    assert messages[-1] == outputs[0]  # the summary comes last


def test_stage_lines_stay_off_the_terminal(default_run: CliResult) -> None:
    stage_lines = [message for message in run_log_messages(default_run) if message.startswith(STAGES)]
    assert stage_lines
    for line in stage_lines:
        assert line not in default_run.stdout and line not in default_run.stderr, line
    assert RUN_LOG not in default_run.stdout + default_run.stderr
    # the terminal has the summary, which the log holds too
    summary = default_run.stdout.strip().splitlines()
    assert summary[-1].strip().startswith("outputs") and summary[-1] in run_log_messages(default_run)


def test_a_successful_run_writes_no_error_file(default_run: CliResult) -> None:
    assert not (default_run.run_dir / "error.txt").exists()
    assert (default_run.run_dir / "probe.safetensors").is_file()


def test_a_default_run_names_no_ignored_setting(default_run: CliResult) -> None:
    assert ignored_lines(default_run) == []
    assert IGNORED not in (default_run.run_dir / "probe_lab.log").read_text()


# -- a failed run -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragment", "stages_before"),
    [
        (("data.validation_split=0.9", "data.n=200"), "data.validation_split=0.9", ()),  # refused by the schema
        (("data.n=200", "data.dim=8", "model.hidden_dim=16"), "model.hidden_dim=16", ("backend",)),  # while loading
    ],
    ids=["settings", "data"],
)
def test_a_failed_run_records_its_error(
    cli, overrides: tuple[str, ...], fragment: str, stages_before: tuple[str, ...]
) -> None:
    result = cli(*overrides)
    assert result.returncode == 2, result.stderr
    stderr = result.stderr.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("probe_lab: error: "), result.stderr
    line = stderr[0].removeprefix("probe_lab: error: ")
    assert fragment in line
    assert (result.run_dir / "error.txt").read_text().splitlines()[0] == line
    messages = run_log_messages(result)
    assert messages[-1] == line  # how far it got, then why it stopped
    for stage in stages_before:
        assert any(message.startswith(stage) for message in messages[:-1]), messages
    assert not (result.run_dir / "probe.safetensors").exists()


# -- settings without effect ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (
            ("backend=sklearn", "precision=bf16-mixed", "probe.learning_rate=0.01"),
            ("precision=bf16-mixed", "probe.learning_rate=0.01", "sklearn backend"),
        ),
        (("backend=pytorch", "device=cpu", "probe.solver=saga"), ("probe.solver=saga", "sklearn only")),
    ],
    ids=["sklearn", "pytorch"],
)
def test_settings_without_effect_are_named_in_one_line(cli, overrides: tuple[str, ...], named: tuple[str, ...]) -> None:
    result = cli(*overrides, "data.n=300", "data.dim=8")
    assert result.returncode == 0, result.stderr
    lines = ignored_lines(result)
    assert len(lines) == 1, result.stdout + result.stderr
    for fragment in named:
        assert fragment in lines[0], lines[0]
    assert IGNORED in (result.run_dir / "probe_lab.log").read_text()


def test_a_run_that_succeeds_in_a_failed_runs_folder_removes_its_error_txt(tmp_path: Path) -> None:
    folder = tmp_path / "again"
    failed = run_module("probe_lab", "progress_bar=false", "data.n=300", "model.hidden_dim=9", run_dir=folder)
    assert failed.returncode == 2 and (folder / "error.txt").is_file()
    done = run_module("probe_lab", "progress_bar=false", "data.n=300", run_dir=folder)
    assert done.returncode == 0, done.stderr
    assert (folder / "probe.safetensors").is_file() and not (folder / "error.txt").exists()


def test_trainer_flags_with_the_sklearn_backend_are_named_as_ignored(tmp_path: Path) -> None:
    result = run_module("probe_lab", "progress_bar=false", "data.n=300", "trainer.max_epochs=3", run_dir=tmp_path / "r")
    assert result.returncode == 0, result.stderr
    (line,) = ignored_lines(result)
    assert "trainer.max_epochs=3" in line and "pytorch backend only" in line, line
