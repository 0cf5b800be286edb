"""The README's commands run as written, on the example data its own snippet makes.

Every `python -m probe_lab…` line of the README's bash blocks is one test. A command that reads what
an earlier command writes (a store from `probe_lab.convert`, a run folder named by `hydra.run.dir=`)
gets a copy of that output, made once per test process beside the example data; the test of such an
earlier command checks that same run rather than running it a second time. The only additions to a
command are a run or sweep folder inside the test's directory when the command names none, so that
runs never share a folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text()
EXAMPLE_FILES = (
    "acts.npy",
    "labels.npy",
    "layers.npy",
    "negatives.npy",
    "activations",
    "labels.txt",
    "tiny-llama",
    "reviews.csv",
)
# Commands needing an optional extra run only where it is installed.
EXTRAS = {
    "logger=wandb": "wandb",
    "hydra/launcher=parallel": "hydra_plugins.hydra_joblib_launcher",
    "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/sweeper=regularization_search": "hydra_plugins.hydra_optuna_sweeper",
}


def readme_commands() -> list[list[str]]:
    """The README's `python -m probe_lab…` commands, in order, as argument lists (comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["python", "-m"] and words[2].split(".")[0] == "probe_lab":
                commands.append(words)
    return commands


COMMANDS = readme_commands()


def outputs(words: list[str]) -> set[str]:
    """What a command writes that a later one may read: a convert's store, a named run folder."""
    if words[2] == "probe_lab.convert":
        return {words[4].rstrip("/")}
    if words[2] == "probe_lab.extract":
        return {word.split("=", 1)[1].rstrip("/") for word in words if word.startswith("output=")}
    return {word.split("=", 1)[1].rstrip("/") for word in words if word.startswith("hydra.run.dir=")}


def reads(words: list[str]) -> set[str]:
    return {part.rstrip("/") for word in words[3:] for part in word.split("=")[-1:]}


@pytest.fixture(scope="session")
def example_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's example-data and example-model snippets, run in a folder of their own."""
    folder = tmp_path_factory.mktemp("readme_data")
    for name in ("example-data", "example-model"):
        snippet = re.search(rf"<!-- {name} -->\n```python\n(.*?)```", README, flags=re.S)
        assert snippet is not None, f"README.md has no {name} snippet"
        done = subprocess.run([sys.executable, "-c", snippet.group(1)], cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert all((folder / name).exists() for name in EXAMPLE_FILES)
    return folder


def needed_by_later_commands(index: int) -> bool:
    """Whether a later README command reads what command `index` writes."""
    return any(outputs(COMMANDS[index]) & reads(later) for later in COMMANDS[index + 1 :])


@pytest.fixture(scope="session")
def made_by_earlier_commands(example_data: Path):
    """made(index): run README command `index` once in the example-data folder (after the earlier
    commands whose outputs it reads), return what it wrote. made.results[index] is that run."""
    done: dict[int, set[str]] = {}
    results: dict[int, subprocess.CompletedProcess] = {}

    def made(index: int) -> set[str]:
        if index not in done:
            for earlier in earlier_commands_read_by(index):
                made(earlier)
            result = run_command(COMMANDS[index], example_data)
            assert result.returncode == 0, f"{shlex.join(COMMANDS[index])}\n{result.stderr[-3000:]}"
            results[index] = result
            done[index] = outputs(COMMANDS[index])
        return done[index]

    made.results = results
    return made


def earlier_commands_read_by(index: int) -> list[int]:
    needed = reads(COMMANDS[index])
    return [earlier for earlier, words in enumerate(COMMANDS[:index]) if outputs(words) & needed]


def run_command(words: list[str], folder: Path) -> subprocess.CompletedProcess:
    extra = []
    if words[2] != "probe_lab.convert" and not any(w.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for w in words):
        multirun = "-m" in words or "--multirun" in words
        extra = [f"hydra.sweep.dir=sweep{len(list(folder.glob('sweep*')))}"] if multirun else []
        extra = extra or [f"hydra.run.dir=run{len(list(folder.glob('run*')))}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, *words[1:], *extra]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env, timeout=600)


def test_the_readme_has_its_examples() -> None:
    programs = {words[2] for words in COMMANDS}
    assert programs == {
        "probe_lab",
        "probe_lab.predict",
        "probe_lab.convert",
        "probe_lab.extract",
        "probe_lab.transfer",
    }
    assert len(COMMANDS) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[" ".join(w[3:])[:70] or "(defaults)" for w in COMMANDS])
def test_readme_command_runs_as_written(
    index: int, example_data: Path, made_by_earlier_commands, tmp_path: Path
) -> None:
    words = COMMANDS[index]
    for marker, module in EXTRAS.items():
        if marker in words and not installed(module):
            pytest.skip(f"{marker} needs {module}, not installed")
    if needed_by_later_commands(index):
        # A command whose outputs later commands read runs once per test process, in the example-data
        # folder (after the commands it reads from), whichever test needs it first: this test checks
        # that very run.
        made_by_earlier_commands(index)
        done = made_by_earlier_commands.results[index]
    else:
        for name in EXAMPLE_FILES:
            (tmp_path / name).symlink_to(example_data / name)
        for earlier in earlier_commands_read_by(index):
            for output in made_by_earlier_commands(earlier):
                (tmp_path / output).parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(example_data / output, tmp_path / output, symlinks=True)
        done = run_command(words, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(words)}\n{output[-3000:]}"
    assert "error" not in done.stderr.lower(), done.stderr[-3000:]
    assert "settings without effect" not in output  # the examples use what they set


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
