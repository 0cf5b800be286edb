"""`EvalSettings`: how a trained probe is judged (the schema of the `eval` config group).

target_fpr: false-positive rates to set decision thresholds at, on the scores of `control` (a
negatives-only activation set, any data source) or, without one, of the validation negatives.
controls: also train the same probe on permuted training labels and score a random direction, for
the selectivity of the probe (its test AUROC minus theirs). bootstrap_resamples / confidence: the
stratified bootstrap behind the test metrics' confidence intervals (0 resamples: none).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from probe_lab.errors import ProbeLabError
from probe_lab.settings.data import SCHEMAS, DataSettings, DataSource

MIN_RESAMPLES = 1000  # fewer resamples leave the interval's ends noisy at the third decimal


@dataclass
class EvalSettings:
    target_fpr: list[float] = field(default_factory=lambda: [0.01, 0.001])
    control: Any = None  # {source: npy, x: ..., ...}: negatives scored to set the thresholds
    controls: bool = False
    bootstrap_resamples: int = MIN_RESAMPLES
    confidence: float = 0.95

    def __post_init__(self) -> None:
        self.target_fpr = [float(rate) for rate in self.target_fpr]
        for rate in self.target_fpr:
            if not 0.0 < rate < 1.0:
                raise ProbeLabError(f"eval.target_fpr: every rate must be in (0, 1), got {rate}")
        resamples = self.bootstrap_resamples
        if isinstance(resamples, bool) or not isinstance(resamples, int) or (0 < resamples < MIN_RESAMPLES):
            raise ProbeLabError(
                f"eval.bootstrap_resamples must be 0 (no intervals) or >= {MIN_RESAMPLES}, got {resamples!r}"
            )
        if not 0.5 <= self.confidence < 1.0:
            raise ProbeLabError(f"eval.confidence must be in [0.5, 1), got {self.confidence}")
        if self.control is not None and not isinstance(self.control, DataSettings):
            self.control = control_settings(self.control)


def control_settings(values: Any) -> DataSettings:
    """eval.control's mapping as the settings of its data source (`source` names it, as data= does)."""
    if not isinstance(values, dict) or "source" not in values:
        raise ProbeLabError(
            "eval.control must name a data source and its files, e.g. eval.control={source:npy,x:negatives.npy}"
        )
    values = dict(values)
    try:
        source = DataSource(values.pop("source"))
    except ValueError:
        choices = ", ".join(s.value for s in DataSource)
        raise ProbeLabError(f"eval.control.source must be one of {choices}") from None
    schema = SCHEMAS[source]
    declared = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - declared)
    if unknown:
        raise ProbeLabError(f"unknown setting eval.control.{unknown[0]} for source {source.value}")
    return schema(source=source, **values)
