"""`python -m probe_lab.predict probe=<run folder or .safetensors> data=...`: score activations.

Writes scores.csv (row, logit, probability, prediction) and scores.npy (probabilities) into the
run folder; with labels, metrics.json too. The threshold is, in this order: `threshold=` (a
probability), `at_fpr=` (the training run's threshold at that false-positive rate, probe.json's
`thresholds`), or the one the training run picked on its validation split, else 0.5. The layer
scored is the one the probe was trained on unless data.layer names another and allow_other_layer=true
(`scoring_layer`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from probe_lab import metrics as metrics_lib
from probe_lab.artifacts import staged_artifacts, write_json
from probe_lab.cli_help import answer_help_or_version, predict_help
from probe_lab.data.sources import layer_count, load_dataset
from probe_lab.errors import ProbeLabError
from probe_lab.probe import load_probe, sigmoid
from probe_lab.settings.schema import PredictConfig, register_configs, to_settings

register_configs()
log = logging.getLogger(__name__)


def probe_files(location: str) -> tuple[Path, Path | None]:
    """(probe.safetensors, probe.json or None) for a run folder or a probe file."""
    path = Path(location)
    if path.is_dir():
        path = path / "probe.safetensors"
    if not path.is_file():
        raise ProbeLabError(f"probe ({location}): no probe.safetensors found")
    sidecar = path.with_suffix(".json")
    return path, sidecar if sidecar.is_file() else None


@dataclass(frozen=True)
class ProbeRecord:
    """What a probe's files say about how to score with it: the decision threshold, and the layer it was
    trained on (`known_layer` False for a probe saved without one, e.g. by the Python API) of how many
    (`layers`; None for N×D data, or when not recorded)."""

    threshold: float
    layer: int | None
    known_layer: bool
    layers: int | None = None
    at_fpr: tuple[dict[str, Any], ...] = ()  # the run's thresholds at false-positive rates

    def decision(self, threshold: float | None, at_fpr: float | None) -> Decision:
        """The rule predictions follow: `threshold` (a probability), the run's threshold at `at_fpr`,
        or the run's balanced validation threshold."""
        if threshold is not None and at_fpr is not None:
            raise ProbeLabError("threshold and at_fpr both set: choose one")
        if threshold is not None:
            if not 0.0 <= threshold <= 1.0:
                raise ProbeLabError(f"threshold={threshold}: a probability in [0, 1]")
            return Decision(threshold, None, f"threshold={threshold:g}")
        if at_fpr is None:
            return Decision(self.threshold, None, "the run's balanced validation threshold")
        for point in self.at_fpr:
            if math.isclose(float(point["target_fpr"]), at_fpr, rel_tol=1e-9):
                how = f"at_fpr={at_fpr:g}, set on the run's {point['source']}"
                return Decision(float(point["probability"]), float(point["logit"]), how)
        known = ", ".join(f"{float(point['target_fpr']):g}" for point in self.at_fpr) or "none"
        raise ProbeLabError(f"at_fpr={at_fpr:g}: the probe's run set thresholds at false-positive rates {known}")

    @classmethod
    def read(cls, header: dict[str, Any], sidecar: Path | None) -> ProbeRecord:
        """From the safetensors header, overridden by probe.json beside it where that has a value."""
        record = dict(header)
        if sidecar is not None:
            try:
                values = json.loads(sidecar.read_text())
                if not isinstance(values, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                raise ProbeLabError(f"{sidecar}: not a probe_lab probe.json ({err})") from None
            record |= values
        try:
            threshold = float(record.get("threshold", 0.5))
            layer, layers = record.get("layer"), record.get("layers")
            for name, value in (("layer", layer), ("layers", layers)):
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError(f"{name} must be an integer or null, got {value!r}")
        except (TypeError, ValueError) as err:
            raise ProbeLabError(f"{sidecar or 'probe metadata'}: not a probe_lab probe.json ({err})") from None
        at_fpr = record.get("thresholds") or []
        if not isinstance(at_fpr, list) or not all(
            isinstance(point, dict) and {"target_fpr", "logit", "probability"} <= set(point) for point in at_fpr
        ):
            raise ProbeLabError(f"{sidecar or 'probe metadata'}: not a probe_lab probe.json (bad thresholds)")
        return cls(threshold, layer, "layer" in record, layers, tuple(at_fpr))


@dataclass(frozen=True)
class Decision:
    """Rows are flagged when their probability is at or above `threshold` — or, for a threshold set at
    a false-positive rate, their logit at or above `logit` (as the run set it, where probabilities of
    confident rows would all round to 1)."""

    threshold: float
    logit: float | None
    how: str

    def flagged(self, logits: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        return logits >= self.logit if self.logit is not None else probabilities >= self.threshold


def scoring_layer(record: ProbeRecord, requested: int | None, layers: int | None, allow_other: bool) -> int | None:
    """The layer of the data to score, as an index in [0, layers): data.layer when given, else the probe's.

    layers: how many the data's rows hold (None: N×D rows, which are scored as they are). Scoring a
    layer other than the probe's, data with another number of layers than the probe's, or a layer
    with a probe trained on N×D rows needs `allow_other_layer=true`: a probe of one layer scores
    another with no error, only wrong numbers.
    """
    if layers is None:
        return requested  # N×D: a layer given is refused by the dataset, naming the file
    chosen = None if requested is None else _layer_index(requested, layers, f"data.layer={requested}")
    if allow_other and chosen is not None:
        return chosen
    if record.layer is None:
        if not record.known_layer:
            if chosen is None:
                raise ProbeLabError(
                    f"the probe was saved without a layer and the data holds {layers} layers: set data.layer"
                )
            return chosen  # nothing to check against
        if chosen is not None:
            raise ProbeLabError(
                f"data.layer={requested}: the probe was trained on N×D activations, not on a layer; "
                "set allow_other_layer=true to score this layer with it anyway"
            )
        raise ProbeLabError(
            f"the probe was trained on N×D activations and the data holds {layers} layers: set data.layer "
            "and allow_other_layer=true to score one of them with it"
        )
    if record.layers is not None and record.layers != layers and not allow_other:
        raise ProbeLabError(
            f"the probe was trained on layer {record.layer} of {record.layers}-layer activations but the data "
            f"holds {layers} layers; set allow_other_layer=true (and data.layer) to score them anyway"
        )
    trained = _layer_index(record.layer, layers, f"the probe's layer {record.layer}")
    if chosen is not None and chosen != trained:
        raise ProbeLabError(
            f"data.layer={requested}: the probe was trained on layer {record.layer}; leave data.layer unset "
            "to score that layer, or set allow_other_layer=true to score another one"
        )
    return trained


def _layer_index(layer: int, layers: int, label: str) -> int:
    if not -layers <= layer < layers:
        raise ProbeLabError(f"{label} is out of range for data holding {layers} layers")
    return layer % layers


def predict(cfg: DictConfig, out_dir: Path) -> dict:
    if OmegaConf.is_missing(cfg, "probe_path"):
        raise ProbeLabError("probe=PATH is required: a training run's folder or its probe.safetensors")
    settings: PredictConfig = to_settings(cfg, PredictConfig)
    probe_path, sidecar = probe_files(settings.probe_path)
    weights, header = load_probe(probe_path)
    record = ProbeRecord.read(header, sidecar)
    decision = record.decision(settings.threshold, settings.at_fpr)
    threshold = decision.threshold
    data = settings.data
    layers = layer_count(data)
    layer = scoring_layer(record, data.layer, layers, settings.allow_other_layer)
    if layer != data.layer:
        data = dataclasses.replace(data, layer=layer)
    dataset = load_dataset(data, settings.seed, require_labels=False)
    if dataset.dim != weights.input_dim:
        raise ProbeLabError(
            f"{dataset.name}: activations have {dataset.dim} dims, "
            f"the probe at {probe_path} expects {weights.input_dim}"
        )
    dataset.check_finite()
    logits = weights.decision_function(dataset)
    probabilities = sigmoid(logits)
    predictions = decision.flagged(logits, probabilities).astype(np.int64)
    result: dict = {
        "probe": str(probe_path),
        "n": len(dataset),
        "layer": layer,
        "threshold": threshold,
        "threshold_logit": decision.logit,
        "threshold_from": decision.how,
    }
    with staged_artifacts(out_dir) as staging:
        np.save(staging / "scores.npy", probabilities)
        rows = np.column_stack([np.arange(len(logits)), logits, probabilities, predictions])
        np.savetxt(
            staging / "scores.csv",
            rows,
            delimiter=",",
            header="row,logit,probability,prediction",
            comments="",
            fmt=["%d", "%.7g", "%.7g", "%d"],
        )
        if dataset.labels is not None:
            if len(np.unique(dataset.labels)) == 2:
                result["metrics"] = metrics_lib.evaluate(dataset.labels, probabilities, threshold) | {
                    "accuracy": float(np.mean(predictions == dataset.labels))
                }
            else:  # ranking metrics need both classes; accuracy still says how many were caught
                result["metrics"] = {"accuracy": float(np.mean(predictions == dataset.labels))}
                log.warning("%s: labels hold one class only; AUROC and AP are undefined", dataset.name)
            write_json(staging / "metrics.json", result)
    print(f"probe_lab.predict: scored {len(dataset)} rows with {probe_path}")
    print(
        f"  flagged  {int(predictions.sum())} of {len(dataset)} rows at probability >= {threshold:.4g} ({decision.how})"
    )
    if layer is not None and layers is not None:
        trained = "N×D activations" if record.layer is None else f"layer {record.layer}"
        own = record.layer is not None and record.layers in (None, layers) and layer == record.layer % layers
        print(
            f"  layer    {layer}" + ("" if own or not record.known_layer else f" (the probe was trained on {trained})")
        )
    elif record.layer is not None:
        print(f"  layer    N×D rows; the probe was trained on layer {record.layer}, which these rows are taken to be")
    if "metrics" in result:
        shown = "  ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
        print(f"  {shown}")
    print(f"  outputs  {out_dir}: scores.csv, scores.npy{', metrics.json' if 'metrics' in result else ''}")
    return result


@hydra.main(version_base=None, config_path="pkg://probe_lab.conf", config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        predict(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ProbeLabError as err:
        print(f"probe_lab.predict: error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    # Both apps share conf/, where `probe` is the training app's config group: Hydra would read
    # `probe=PATH` as choosing an option of that group. Here it names a file, kept as `probe_path`.
    sys.argv = [f"probe_path={arg[len('probe=') :]}" if arg.startswith("probe=") else arg for arg in sys.argv]
    if not answer_help_or_version(sys.argv[1:], "probe_lab.predict", predict_help):
        _hydra_main()


if __name__ == "__main__":
    main()
