"""Do the two backends agree? Parity numbers for two probes trained on identical data and splits.

Both the parity experiment (`python -m probe_lab experiment=parity`) and the summary of a sweep over
`backend=sklearn,pytorch` compare two run folders the same way: the exported raw-space weights
(probe.safetensors) and the test-split probabilities each run saved (test_scores.npy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probe_lab.errors import ProbeLabError
from probe_lab.probe import ProbeWeights, load_probe

TEST_SCORES = "test_scores.npy"


@dataclass(frozen=True)
class BackendOutcome:
    """What one backend produced: its probe, its test probabilities and its headline numbers."""

    backend: str
    weights: ProbeWeights
    test_proba: np.ndarray
    val_auroc: float
    test_auroc: float
    fit_seconds: float

    @classmethod
    def from_run_folder(cls, folder: Path) -> BackendOutcome:
        """Read a finished run folder (probe.safetensors, test_scores.npy, metrics.json)."""
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
            weights, _ = load_probe(folder / "probe.safetensors")
            test_proba = np.load(folder / TEST_SCORES, allow_pickle=False)
        except (OSError, ValueError, KeyError) as err:
            raise ProbeLabError(f"{folder}: not a finished run folder ({str(err).splitlines()[0]})") from None
        return cls(
            metrics["backend"],
            weights,
            test_proba,
            float(metrics["val"]["auroc"]),
            float(metrics["test"]["auroc"]),
            float(metrics["fit_seconds"]),
        )


def compare(a: BackendOutcome, b: BackendOutcome) -> dict[str, Any]:
    """Per backend: val/test AUROC and fit seconds; then |Δ test AUROC|, the cosine of the raw-space
    weights, the Pearson correlation of the test probabilities and their largest difference."""
    if a.test_proba.shape != b.test_proba.shape:
        raise ProbeLabError(f"{a.backend} and {b.backend} were scored on different test splits")
    wa, wb = a.weights.weight.astype(np.float64), b.weights.weight.astype(np.float64)
    return {
        **{
            outcome.backend: {
                "val_auroc": outcome.val_auroc,
                "test_auroc": outcome.test_auroc,
                "fit_seconds": outcome.fit_seconds,
            }
            for outcome in (a, b)
        },
        "abs_delta_test_auroc": abs(a.test_auroc - b.test_auroc),
        "weight_cosine": float(wa @ wb / (np.linalg.norm(wa) * np.linalg.norm(wb))),
        "test_score_pearson": float(np.corrcoef(a.test_proba, b.test_proba)[0, 1]),
        "max_abs_delta_probability": float(np.max(np.abs(a.test_proba - b.test_proba))),
    }


def compared_backends(numbers: dict[str, Any]) -> list[str]:
    """The backends a comparison from `compare` holds numbers for, in its order (its other keys are numbers)."""
    return [key for key, value in numbers.items() if isinstance(value, dict)]
