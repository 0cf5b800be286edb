"""`python -m probe_lab.predict`: the layer it scores, its refusals, its --help and --version.

A probe scores the layer it was trained on (probe.json's `layer`, and the probe.safetensors header's);
data.layer naming another one needs allow_other_layer=true. The training runs are shared by the module:
one probe of layer 2 of N×3×16 activations, one of N×16 rows.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from conftest import CliResult, run_here

from probe_lab.data.synthetic import activation_like
from probe_lab.errors import ProbeLabError
from probe_lab.predict import ProbeRecord, scoring_layer
from probe_lab.probe import load_probe

ROWS, LAYERS, DIM, PROBED = 400, 3, 16, 2


@dataclass(frozen=True)
class Trained:
    """A training run's folder, and the activations it was trained on."""

    run_dir: Path
    x: np.ndarray  # (ROWS, LAYERS, DIM): the labels are planted in layer PROBED only
    x_path: Path  # x as .npy
    rows_path: Path  # x[:, PROBED] as an N×D .npy
    y_path: Path

    def probability(self, rows: np.ndarray) -> np.ndarray:
        weights, _ = load_probe(self.run_dir / "probe.safetensors")
        return weights.predict_proba(np.ascontiguousarray(rows))

    def metrics(self) -> dict:
        return json.loads((self.run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def activations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, Path, Path, Path]:
    """(folder, x (ROWS, LAYERS, DIM), x.npy, layer PROBED's rows as N×D .npy, y.npy); the other layers are
    activation-like rows whose labels are unrelated."""
    folder = tmp_path_factory.mktemp("activations")
    rows, y = activation_like(ROWS, DIM, seed=7, signal=6.0)
    others = [activation_like(ROWS, DIM, seed=seed)[0] for seed in (11, 12)]
    x = np.stack([*others[:PROBED], rows, *others[PROBED:]], axis=1)
    assert x.shape == (ROWS, LAYERS, DIM)
    paths = folder / "x.npy", folder / "rows.npy", folder / "y.npy"
    for path, array in zip(paths, (x, rows, y), strict=True):
        np.save(path, array)
    return folder, x, *paths


def _train(folder: Path, x_path: Path, y_path: Path, *overrides: str) -> Path:
    """The run folder of `python -m probe_lab backend=sklearn data=npy ... overrides...`, trained in this
    process (`run_here`): the tests here are about the predict command line, which reads the folder."""
    run_dir = folder / f"train-{x_path.stem}"
    data = ("data=npy", f"data.x={x_path}", f"data.y={y_path}")
    run_here("backend=sklearn", *data, *overrides, run_dir=run_dir)
    return run_dir


@pytest.fixture(scope="module")
def layer_probe(activations: tuple[Path, np.ndarray, Path, Path, Path]) -> Trained:
    """A probe trained with data.layer=PROBED on the N×L×D activations."""
    folder, x, x_path, rows_path, y_path = activations
    run_dir = _train(folder, x_path, y_path, f"data.layer={PROBED}")
    return Trained(run_dir, x, x_path, rows_path, y_path)


@pytest.fixture(scope="module")
def rows_probe(activations: tuple[Path, np.ndarray, Path, Path, Path]) -> Trained:
    """A probe trained on N×D rows (layer PROBED's, saved on their own): it records no layer."""
    folder, x, x_path, rows_path, y_path = activations
    run_dir = _train(folder, rows_path, y_path)
    return Trained(run_dir, x, x_path, rows_path, y_path)


def predict(cli, probe: Path, x_path: Path, y_path: Path, *overrides: str) -> CliResult:
    return cli(
        f"probe={probe}", "data=npy", f"data.x={x_path}", f"data.y={y_path}", *overrides, module="probe_lab.predict"
    )


def scored(result: CliResult) -> tuple[dict, np.ndarray]:
    """(metrics.json, scores.npy) of a predict run that succeeded."""
    assert result.returncode == 0, result.stderr
    return json.loads((result.run_dir / "metrics.json").read_text()), np.load(result.run_dir / "scores.npy")


def refusal(result: CliResult) -> str:
    """The one error line of a refused predict run (exit 2, nothing written), less its prefix."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("probe_lab.predict: error: "), result.stderr
    assert not (result.run_dir / "scores.npy").exists() and not (result.run_dir / "metrics.json").exists()
    return lines[0]


# -- the layer scored -------------------------------------------------------------------------------


def test_the_probes_layer_is_scored_without_data_layer(cli, layer_probe: Trained) -> None:
    train = layer_probe.metrics()
    assert train["layer"] == PROBED and json.loads((layer_probe.run_dir / "probe.json").read_text())["layer"] == PROBED
    assert train["test"]["auroc"] > 0.8
    result = predict(cli, layer_probe.run_dir, layer_probe.x_path, layer_probe.y_path)
    metrics, scores = scored(result)
    assert metrics["layer"] == PROBED and metrics["threshold"] == train["threshold"]
    np.testing.assert_allclose(scores, layer_probe.probability(layer_probe.x[:, PROBED]), rtol=1e-6)
    # every row (the training rows among them) scored about as well as the run's own test split
    assert metrics["metrics"]["auroc"] > 0.8
    assert abs(metrics["metrics"]["auroc"] - train["test"]["auroc"]) < 0.1
    assert re.search(rf"^  layer +{PROBED}$", result.stdout, re.MULTILINE), result.stdout


def test_another_layer_is_refused_without_allow_other_layer(cli, layer_probe: Trained) -> None:
    line = refusal(predict(cli, layer_probe.run_dir, layer_probe.x_path, layer_probe.y_path, "data.layer=1"))
    for fragment in ("data.layer=1", f"layer {PROBED}", "allow_other_layer"):
        assert fragment in line, line


def test_allow_other_layer_scores_the_layer_asked_for(cli, layer_probe: Trained) -> None:
    result = predict(
        cli, layer_probe.run_dir, layer_probe.x_path, layer_probe.y_path, "data.layer=1", "allow_other_layer=true"
    )
    metrics, scores = scored(result)
    assert metrics["layer"] == 1
    np.testing.assert_allclose(scores, layer_probe.probability(layer_probe.x[:, 1]), rtol=1e-6)
    assert abs(metrics["metrics"]["auroc"] - 0.5) < 0.12  # the labels are not in layer 1


def test_a_negative_data_layer_naming_the_probes_layer_is_accepted(cli, layer_probe: Trained) -> None:
    assert PROBED - LAYERS == -1
    result = predict(cli, layer_probe.run_dir, layer_probe.x_path, layer_probe.y_path, "data.layer=-1")
    assert "  layer    2\n" in result.stdout  # the probe's own layer: no note that it was trained on another
    metrics, scores = scored(result)
    assert metrics["layer"] == PROBED
    np.testing.assert_allclose(scores, layer_probe.probability(layer_probe.x[:, PROBED]), rtol=1e-6)
    assert metrics["metrics"]["auroc"] > 0.8


def test_nxd_rows_are_scored_as_the_probes_layer(cli, layer_probe: Trained) -> None:
    result = predict(cli, layer_probe.run_dir, layer_probe.rows_path, layer_probe.y_path)
    _, scores = scored(result)
    np.testing.assert_allclose(scores, layer_probe.probability(np.load(layer_probe.rows_path)), rtol=1e-6)
    assert f"the probe was trained on layer {PROBED}, which these rows are taken to be" in result.stdout, result.stdout


def test_the_probe_file_alone_knows_its_layer(cli, layer_probe: Trained, tmp_path: Path) -> None:
    """probe.safetensors' header records the layer and threshold: without probe.json beside it, predict
    still scores the probe's layer (and would otherwise ask for data.layer)."""
    folder = tmp_path / "probe_only"
    shutil.copytree(layer_probe.run_dir, folder)
    (folder / "probe.json").unlink()
    _, header = load_probe(folder / "probe.safetensors")
    assert header["layer"] == PROBED
    metrics, scores = scored(predict(cli, folder / "probe.safetensors", layer_probe.x_path, layer_probe.y_path))
    assert metrics["layer"] == PROBED and metrics["threshold"] == layer_probe.metrics()["threshold"]
    np.testing.assert_allclose(scores, layer_probe.probability(layer_probe.x[:, PROBED]), rtol=1e-6)


# -- a probe trained on N×D rows ----------------------------------------------------------------------


def test_a_probe_of_nxd_rows_scores_a_layer_only_with_allow_other_layer(cli, rows_probe: Trained) -> None:
    assert json.loads((rows_probe.run_dir / "probe.json").read_text())["layer"] is None
    line = refusal(predict(cli, rows_probe.run_dir, rows_probe.x_path, rows_probe.y_path, f"data.layer={PROBED}"))
    for fragment in (f"data.layer={PROBED}", "N×D", "allow_other_layer=true"):
        assert fragment in line, line
    allowed = predict(
        cli, rows_probe.run_dir, rows_probe.x_path, rows_probe.y_path, f"data.layer={PROBED}", "allow_other_layer=true"
    )
    metrics, scores = scored(allowed)
    assert metrics["layer"] == PROBED
    np.testing.assert_allclose(scores, rows_probe.probability(rows_probe.x[:, PROBED]), rtol=1e-6)


def test_a_probe_of_nxd_rows_on_layered_data_asks_for_data_layer(cli, rows_probe: Trained) -> None:
    line = refusal(predict(cli, rows_probe.run_dir, rows_probe.x_path, rows_probe.y_path))
    assert "set data.layer" in line and f"{LAYERS} layers" in line, line


def test_activations_of_another_width_are_still_refused(cli, layer_probe: Trained, tmp_path: Path) -> None:
    narrow = tmp_path / "narrow.npy"
    np.save(narrow, layer_probe.x[:, :, : DIM // 2].copy())
    line = refusal(predict(cli, layer_probe.run_dir, narrow, layer_probe.y_path))
    assert f"{DIM // 2} dims" in line and f"expects {DIM}" in line, line


# -- the decision, unit by unit ---------------------------------------------------------------------

LAYER_2 = ProbeRecord(0.5, 2, known_layer=True)
NXD = ProbeRecord(0.5, None, known_layer=True)  # trained on N×D rows: layer null in probe.json
UNRECORDED = ProbeRecord(0.5, None, known_layer=False)  # saved without a layer (the Python API)


@pytest.mark.parametrize(
    ("record", "requested", "layers", "allow", "expected"),
    [
        (LAYER_2, None, 3, False, 2),  # the probe's own layer
        (LAYER_2, 2, 3, False, 2),
        (LAYER_2, -1, 3, False, 2),  # the same layer, counted from the last
        (ProbeRecord(0.5, -1, known_layer=True), None, 3, False, 2),  # a probe trained on the last layer
        (LAYER_2, 1, 3, True, 1),
        (LAYER_2, None, None, False, None),  # N×D rows are scored as they are
        (LAYER_2, 0, None, False, 0),  # ... and a layer given for them is left to the dataset to refuse
        (NXD, 1, 3, True, 1),
        (UNRECORDED, 1, 3, False, 1),  # nothing to check against
    ],
)
def test_scoring_layer_picks(
    record: ProbeRecord, requested: int | None, layers: int | None, allow: bool, expected
) -> None:
    assert scoring_layer(record, requested, layers, allow) == expected


@pytest.mark.parametrize(
    ("record", "requested", "fragments"),
    [
        (LAYER_2, 1, ("data.layer=1", "layer 2", "allow_other_layer=true")),
        (LAYER_2, -2, ("data.layer=-2", "layer 2")),
        (NXD, 2, ("data.layer=2", "N×D", "allow_other_layer=true")),
        (NXD, None, ("N×D", "3 layers", "set data.layer")),
        (UNRECORDED, None, ("saved without a layer", "set data.layer")),
        (LAYER_2, 5, ("data.layer=5", "out of range", "3 layers")),
        (ProbeRecord(0.5, 7, known_layer=True), None, ("the probe's layer 7 is out of range",)),
        (ProbeRecord(0.5, 5, known_layer=True), 0, ("the probe's layer 5 is out of range",)),  # no wrapping to 2
        (ProbeRecord(0.5, 4, known_layer=True, layers=5), None, ("layer 4 of 5-layer", "3 layers", "allow_other")),
    ],
)
def test_scoring_layer_refuses(record: ProbeRecord, requested: int | None, fragments: tuple[str, ...]) -> None:
    with pytest.raises(ProbeLabError) as caught:
        scoring_layer(record, requested, 3, allow_other=False)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_probe_record_reads_the_header_then_probe_json(tmp_path: Path) -> None:
    assert ProbeRecord.read({}, None) == ProbeRecord(0.5, None, known_layer=False)
    assert ProbeRecord.read({"layer": 2, "threshold": 0.3}, None) == ProbeRecord(0.3, 2, known_layer=True)
    sidecar = tmp_path / "probe.json"
    sidecar.write_text(json.dumps({"layer": None, "threshold": 0.7}))
    assert ProbeRecord.read({"layer": 2, "threshold": 0.3}, sidecar) == ProbeRecord(0.7, None, known_layer=True)
    for bad in ('{"layer": "2"}', '{"layer": true}', "[1]", "not json"):
        sidecar.write_text(bad)
        with pytest.raises(ProbeLabError, match=r"not a probe_lab probe\.json"):
            ProbeRecord.read({}, sidecar)


# -- the command line itself ------------------------------------------------------------------------


def test_predict_without_a_probe_names_the_setting(cli, npy_data: tuple[Path, Path]) -> None:
    x_path, _ = npy_data
    line = refusal(cli("data=npy", f"data.x={x_path}", module="probe_lab.predict"))
    assert line.startswith("probe_lab.predict: error: probe=PATH is required: "), line


def test_predict_help_shows_its_own_settings(cli) -> None:
    result = cli("--help", module="probe_lab.predict")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for present in ("probe=PATH", "allow_other_layer", "data.x"):
        assert present in text, text
    # the training app's groups and settings are not predict's
    for group in ("backend", "trainer", "callbacks", "logger", "device", "precision"):
        assert not re.search(rf"^\s*{group}\b", text, re.MULTILINE), text
    assert "probe.regularization" not in text and "validation_split" not in text
    assert not (result.run_dir / "scores.npy").exists()


def test_predict_version(cli) -> None:
    result = cli("--version", module="probe_lab.predict")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"probe_lab.predict {metadata.version('probe-lab')}"


def test_a_negative_training_layer_is_recorded_as_its_index_with_the_layer_count(
    cli, activations: tuple[Path, np.ndarray, Path, Path, Path], tmp_path: Path
) -> None:
    _, x, x_path, _, y_path = activations
    run_dir = _train(tmp_path, x_path, y_path, "data.layer=-1")
    record = json.loads((run_dir / "probe.json").read_text())
    assert (record["layer"], record["layers"]) == (x.shape[1] - 1, x.shape[1])
    assert json.loads((run_dir / "metrics.json").read_text())["layer"] == x.shape[1] - 1
    wider = tmp_path / "wider.npy"  # one more layer: index 2 is not "the last layer" there
    np.save(wider, np.concatenate([x, x[:, :1]], axis=1))
    result = cli(f"probe={run_dir}", "data=npy", f"data.x={wider}", module="probe_lab.predict")
    assert result.returncode == 2 and f"{x.shape[1]}-layer" in result.stderr, result.stderr
