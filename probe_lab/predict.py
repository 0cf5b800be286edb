"""`python -m probe_lab.predict probe=<run folder or .safetensors> data=...`: score activations.

Writes scores.csv (row, logit, probability, prediction) and scores.npy (probabilities) into the
run folder; with labels, metrics.json too. The threshold is the one the training run picked on its
validation split (probe.json beside the probe), else 0.5.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from probe_lab import metrics as metrics_lib
from probe_lab.artifacts import staged_artifacts, write_json
from probe_lab.data.sources import load_dataset
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


def _threshold_from(sidecar: Path, default: float) -> float:
    try:
        value = json.loads(sidecar.read_text()).get("threshold", default)
        return float(value)
    except (ValueError, AttributeError, TypeError) as err:
        raise ProbeLabError(f"{sidecar}: not a probe_lab probe.json ({err})") from None


def predict(cfg: DictConfig, out_dir: Path) -> dict:
    settings: PredictConfig = to_settings(cfg, PredictConfig)
    probe_path, sidecar = probe_files(settings.probe_path)
    weights, header = load_probe(probe_path)
    threshold = float(header.get("threshold", 0.5))
    if sidecar is not None:
        threshold = _threshold_from(sidecar, threshold)
    dataset = load_dataset(settings.data, settings.seed, require_labels=False)
    if dataset.dim != weights.input_dim:
        raise ProbeLabError(
            f"{dataset.name}: activations have {dataset.dim} dims, "
            f"the probe at {probe_path} expects {weights.input_dim}"
        )
    dataset.check_finite()
    logits = weights.decision_function(dataset)
    probabilities = sigmoid(logits)
    predictions = (probabilities >= threshold).astype(np.int64)
    result: dict = {"probe": str(probe_path), "n": len(dataset), "threshold": threshold}
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
                result["metrics"] = metrics_lib.evaluate(dataset.labels, probabilities, threshold)
            else:  # ranking metrics need both classes; accuracy still says how many were caught
                result["metrics"] = {"accuracy": float(np.mean(predictions == dataset.labels))}
                log.warning("%s: labels hold one class only; AUROC and AP are undefined", dataset.name)
            write_json(staging / "metrics.json", result)
    print(f"probe_lab.predict: scored {len(dataset)} rows with {probe_path}")
    if "metrics" in result:
        shown = "  ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
        print(f"  {shown}  (threshold {threshold:.4f})")
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
    _hydra_main()


if __name__ == "__main__":
    main()
