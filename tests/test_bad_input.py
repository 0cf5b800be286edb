"""Bad input on the command line: one clear error line, a non-zero exit, and no artifacts.

Errors probe_lab raises print `probe_lab: error: <message>` (or `probe_lab.predict: error: ...`) and exit 2;
errors Hydra reports itself while composing the config (an unknown group option, an invalid enum value)
exit 1 with Hydra's own message, which names the offending value.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CliResult, run_here, write_npy_data

Cli = Callable[..., CliResult]

# Everything a training or predict run publishes on success.
ARTIFACTS = ("probe.safetensors", "probe.json", "metrics.json", "roc.png", "scores.csv", "scores.npy")


class Evil:
    """Unpickling this creates `marker`: proof that a loader ran arbitrary code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[Path]]:
        return (Path.touch, (self.marker,))


def assert_no_artifacts(result: CliResult) -> None:
    for name in ARTIFACTS:
        assert not (result.run_dir / name).exists(), f"{name} was written by a failed run"


def assert_rejected(result: CliResult, *fragments: object, prog: str = "probe_lab") -> None:
    """Exit 2 with exactly one `prog: error: ...` line on stderr that contains every fragment."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert result.returncode == 2, result.stderr
    assert_no_artifacts(result)


def assert_hydra_rejected(result: CliResult, *fragments: str) -> None:
    """Hydra's own composition error: non-zero exit, no traceback, the offending names on stderr."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 0
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in {result.stderr!r}"
    assert_no_artifacts(result)


def npy_overrides(x: Path, y: Path | None = None) -> list[str]:
    return ["data=npy", f"data.x={x}", *([f"data.y={y}"] if y is not None else [])]


def pt_overrides(directory: Path, labels: Path) -> list[str]:
    return ["data=pt_files", f"data.dir={directory}", f"data.labels={labels}"]


# -- 1. missing files -------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["x", "y", "dir"])
def test_missing_file(cli: Cli, npy_data: tuple[Path, Path], tmp_path: Path, missing: str) -> None:
    x, y = npy_data
    absent = tmp_path / "does_not_exist"
    if missing == "x":
        result = cli(*npy_overrides(absent.with_suffix(".npy"), y))
        assert_rejected(result, "data.x", absent.with_suffix(".npy"), "not found")
    elif missing == "y":
        result = cli(*npy_overrides(x, absent.with_suffix(".npy")))
        assert_rejected(result, "data.y", absent.with_suffix(".npy"), "not found")
    else:
        labels = tmp_path / "labels.txt"
        labels.write_text("0\n1\n")
        result = cli(*pt_overrides(absent, labels))
        assert_rejected(result, "data.dir", absent, "not found")


# -- 2. X and y of different lengths ----------------------------------------------------------------


def test_labels_of_another_length(cli: Cli, npy_data: tuple[Path, Path], tmp_path: Path) -> None:
    x, y = npy_data
    short = tmp_path / "y_short.npy"
    np.save(short, np.load(y)[:-10])
    result = cli(*npy_overrides(x, short))
    assert_rejected(result, x, "600", "590")


# -- 3. labels that are not 0/1 ---------------------------------------------------------------------


def test_non_binary_npy_labels(cli: Cli, npy_data: tuple[Path, Path], tmp_path: Path) -> None:
    x, _ = npy_data
    y = tmp_path / "y_three.npy"
    np.save(y, np.arange(600) % 3)
    result = cli(*npy_overrides(x, y))
    assert_rejected(result, "data.y", y, "binary", "2")


def test_text_labels_with_a_bad_line(cli: Cli, pt_dir: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    directory, labels, _, _ = pt_dir
    lines = labels.read_text().splitlines()
    lines[17] = "yes"
    labels.write_text("\n".join(lines) + "\n")
    result = cli(*pt_overrides(directory, labels))
    assert_rejected(result, "data.labels", labels, "'yes'")


# -- 4. one class -----------------------------------------------------------------------------------


def test_only_one_class(cli: Cli, npy_data: tuple[Path, Path], tmp_path: Path) -> None:
    x, _ = npy_data
    y = tmp_path / "y_ones.npy"
    np.save(y, np.ones(600, dtype=np.int64))
    result = cli(*npy_overrides(x, y))
    assert_rejected(result, x, "only class 1")


def test_a_split_with_one_class(cli: Cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = tmp_path / "x200.npy", tmp_path / "y200.npy"
    np.save(x, rng.standard_normal((200, 8)).astype(np.float32))
    labels = np.zeros(200, dtype=np.int64)
    labels[123] = 1
    np.save(y, labels)
    result = cli(*npy_overrides(x, y))
    assert_rejected(result, x)
    assert "cannot split by label" in result.stderr or "only class 0 present" in result.stderr, result.stderr


# -- 5. NaN or Inf in activations -------------------------------------------------------------------


def test_nan_and_inf_rows(cli: Cli, npy_data: tuple[Path, Path], tmp_path: Path) -> None:
    x, y = npy_data
    values = np.load(x)
    values[[3, 100, 599], 5] = np.nan
    values[10, 0] = np.inf
    values[250, 31] = -np.inf
    bad = tmp_path / "x_nonfinite.npy"
    np.save(bad, values)
    result = cli(*npy_overrides(bad, y))
    assert_rejected(result, bad, "5 of 600 rows contain NaN or Inf")


# -- 6. predict: activations of the wrong width, no probe -------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[CliResult, Path, Path]:
    """(a training run on the npy_data fixture's rows, 600 × 32, with the sklearn backend, x.npy, y.npy),
    the probe the predict tests below are given. Trained once, in this process: what is checked here is
    the predict command line."""
    folder = tmp_path_factory.mktemp("trained")
    x, y = write_npy_data(folder)
    run = run_here(*npy_overrides(x, y), "backend=sklearn", run_dir=folder / "run")
    assert (run.run_dir / "probe.safetensors").is_file()
    return run, x, y


def test_predict_with_activations_of_another_width(cli: Cli, trained, tmp_path: Path) -> None:
    probe, x, y = trained
    narrow = tmp_path / "x16.npy"
    np.save(narrow, np.load(x)[:, :16].copy())
    result = cli(f"probe={probe.run_dir}", *npy_overrides(narrow, y), module="probe_lab.predict")
    assert_rejected(result, narrow, "16 dims", "expects 32", prog="probe_lab.predict")


def test_predict_with_a_folder_without_a_probe(cli: Cli, npy_data: tuple[Path, Path], tmp_path: Path) -> None:
    empty = tmp_path / "no_probe_here"
    empty.mkdir()
    result = cli(f"probe={empty}", *npy_overrides(*npy_data), module="probe_lab.predict")
    assert_rejected(result, empty, "no probe.safetensors", prog="probe_lab.predict")


# -- 7. unknown backend / device / precision / penalty (Hydra's own errors) -------------------------


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("backend=foo", ("backend/foo",)),
        ("device=tpu", ("device/tpu",)),
        ("precision=fp8", ("precision/fp8",)),
        ("probe.penalty=l3", ("probe.penalty", "l3")),
        ("backend.name=foo", ("backend.name", "foo")),
    ],
)
def test_unknown_choice(cli: Cli, override: str, fragments: tuple[str, ...]) -> None:
    assert_hydra_rejected(cli(override, "data.n=200"), *fragments)


def test_a_setting_of_another_data_source_fails_composition(cli: Cli) -> None:
    """Each data source has a schema of its own: another source's field is an unknown key."""
    assert_hydra_rejected(cli("data.layer=7"), "data.layer", "SyntheticData")
    assert_hydra_rejected(cli("data=seed_task", "data.x=a.npy"), "data.x", "SeedTaskData")


# -- 8. regularization <= 0 -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1"])
def test_regularization_not_positive(cli: Cli, value: str) -> None:
    result = cli(f"probe.regularization={value}", "data.n=200")
    assert_rejected(result, "probe.regularization", "positive")


# -- 9. splits that leave a part empty --------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (("data.validation_split=0", "data.n=200"), ("data.validation_split",)),
        (
            ("data.test_split=0.9", "data.validation_split=0.2", "data.n=200"),
            ("data.validation_split=0.2", "data.test_split=0.9", "no training data"),
        ),
        (("data.n=5",), ("data=synthetic", "5 rows are too few")),
    ],
    ids=["no-validation", "no-training", "tiny-dataset"],
)
def test_split_leaves_a_part_empty(cli: Cli, overrides: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    assert_rejected(cli(*overrides), *fragments)


# -- 10. tensor files that are not plain tensors ----------------------------------------------------


def test_pickled_object_is_never_unpickled(
    cli: Cli, pt_dir: tuple[Path, Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    directory, labels, _, _ = pt_dir
    # The payload is live: a plain (unsafe) torch.load of such a file runs it.
    probe_marker = tmp_path / "payload_works"
    torch.save({"obj": Evil(probe_marker)}, tmp_path / "evil_check.pt")
    torch.load(tmp_path / "evil_check.pt", weights_only=False)
    assert probe_marker.exists()

    marker = tmp_path / "unpickled"
    evil = directory / "sample_7.pt"
    torch.save({"obj": Evil(marker)}, evil)
    result = cli(*pt_overrides(directory, labels))
    assert_rejected(result, evil, "not a plain tensor file")
    assert not marker.exists(), "the file was unpickled"


@pytest.mark.parametrize(
    "content",
    [np.random.default_rng(0).bytes(4096), b"hello world\n"],
    ids=["random-bytes", "text"],
)
def test_file_that_is_not_a_torch_file(
    cli: Cli, pt_dir: tuple[Path, Path, np.ndarray, np.ndarray], content: bytes
) -> None:
    directory, labels, _, _ = pt_dir
    garbage = directory / "sample_7.pt"
    garbage.write_bytes(content)
    result = cli(*pt_overrides(directory, labels))
    assert_rejected(result, garbage, "not a plain tensor file")


def test_file_holding_a_dict_of_tensors(cli: Cli, pt_dir: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    directory, labels, _, _ = pt_dir
    wrapped = directory / "sample_7.pt"
    torch.save({"a": torch.zeros(16)}, wrapped)
    result = cli(*pt_overrides(directory, labels))
    assert_rejected(result, wrapped, "holds a dict, expected a tensor")


# -- 11. a corrupt probe file -----------------------------------------------------------------------


def test_predict_with_a_corrupt_probe(cli: Cli, npy_data: tuple[Path, Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt" / "probe.safetensors"
    corrupt.parent.mkdir()
    corrupt.write_bytes(np.random.default_rng(1).bytes(2048))
    result = cli(f"probe={corrupt}", *npy_overrides(*npy_data), module="probe_lab.predict")
    assert_rejected(result, corrupt, "not a probe_lab safetensors file", prog="probe_lab.predict")


# -- 12. model.hidden_dim that does not match the data ----------------------------------------------


def test_hidden_dim_mismatch(cli: Cli) -> None:
    result = cli("model.hidden_dim=99")
    assert_rejected(result, "model.hidden_dim=99", "data=synthetic", "256")


# -- 13. more settings and files checked before any work -------------------------------------------


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("seed=-1", ("seed must be >= 0",)),
        ("data.validation_split=1.5", ("data.validation_split must be in (0, 1)",)),
        ("data.test_split=0", ("data.test_split must be > 0",)),
        ("backend.threshold_b=-1", ("backend.threshold_b must be positive",)),
    ],
)
def test_invalid_setting(cli: Cli, override: str, fragments: tuple[str, ...]) -> None:
    assert_rejected(cli(override), *fragments)


@pytest.mark.parametrize(
    ("refused", "fragment", "not_imported"),
    [
        # a setting its schema refuses costs Hydra's composition, not torch's import
        ("probe.regularization=-1", "probe.regularization", {"torch", "sklearn", "matplotlib", "lightning"}),
        # a data file that is not there costs torch's import, not sklearn's (the split) or matplotlib's
        ("data=npy data.x=absent.npy", "data.x", {"sklearn", "matplotlib", "lightning"}),
    ],
)
def test_a_refusal_comes_before_the_libraries_it_does_not_need_are_imported(
    cli: Cli, refused: str, fragment: str, not_imported: set[str]
) -> None:
    """What is imported before a run is refused (Python's -X importtime, through its environment
    variable, lists every module imported)."""
    result = cli(*refused.split(), env={"PYTHONPROFILEIMPORTTIME": "1"})
    timings = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rpartition("|")[2].strip() for line in timings}
    assert "hydra" in imported  # the timings were recorded
    assert not imported & not_imported, f"imported before the refusal: {sorted(imported & not_imported)}"
    errors = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))
    assert_rejected(CliResult(result.returncode, result.stdout, errors, result.run_dir), fragment)


def test_labels_file_that_is_not_text(cli: Cli, npy_data: tuple[Path, Path], tmp_path: Path) -> None:
    x, _ = npy_data
    binary = tmp_path / "labels.bin"
    binary.write_bytes(bytes(range(256)) * 3)
    assert_rejected(cli(*npy_overrides(x, binary)), "data.y", binary, "not a .npy or a text file")


def test_npz_archive_given_as_activations(cli: Cli, npy_data: tuple[Path, Path], tmp_path: Path) -> None:
    x, y = npy_data
    archive = tmp_path / "x.npz"
    np.savez(archive, x=np.load(x))
    assert_rejected(cli(*npy_overrides(archive, y)), "data.x", archive, "archive")


def test_predict_with_a_corrupt_probe_json_and_with_one_class(cli: Cli, trained, tmp_path: Path) -> None:
    probe, x, y = trained
    run_dir = tmp_path / "trained"  # a copy of the training run's folder, its probe.json corrupted below
    shutil.copytree(probe.run_dir, run_dir)

    positives = tmp_path / "ones.npy"
    np.save(positives, np.ones(len(np.load(y)), dtype=np.int64))
    one_class = cli(f"probe={run_dir}", *npy_overrides(x, positives), module="probe_lab.predict")
    assert one_class.returncode == 0, one_class.stderr  # scoring an all-positive set is legitimate
    assert set(json.loads((one_class.run_dir / "metrics.json").read_text())["metrics"]) == {"accuracy"}

    (run_dir / "probe.json").write_text("{not json")
    result = cli(f"probe={run_dir}", *npy_overrides(x, y), module="probe_lab.predict")
    assert_rejected(result, run_dir / "probe.json", "not a probe_lab probe.json", prog="probe_lab.predict")
