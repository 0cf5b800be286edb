"""Settings a fit does not use: chosen (away from their defaults) but without effect on this backend or
this optimizer, so that `precision=bf16-mixed` with the sklearn backend is named, not silently dropped.

Names are the command line's (`probe.learning_rate`, `precision`, `data.num_workers`); the Python API's
`ProbeTrainingConfig` fields carry the last part of each name (`streaming.num_workers` for `data.*`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from probe_lab.settings.data import StreamingSettings
from probe_lab.settings.placement import Placement
from probe_lab.settings.probe import ProbeKind
from probe_lab.settings.training import ProbeTrainingConfig

# What only the pytorch backend reads (precision "32" is what sklearn does anyway).
PYTORCH_ONLY = (
    "probe.optimizer",
    "probe.learning_rate",
    "probe.batch_size",
    "probe.gradient_accumulation_steps",
    "probe.early_stopping",
    "probe.early_stopping_patience",
    "device.memory_budget_gb",
    "device.host_budget_gb",
    "device.collective_timeout_s",
)
SKLEARN_ONLY = ("probe.solver",)
# What only minibatch AdamW reads: full-batch L-BFGS takes one step per epoch over resident data.
ADAMW_ONLY = ("probe.learning_rate", "probe.gradient_accumulation_steps", "probe.early_stopping_patience")
STREAMING = tuple(f"data.{f.name}" for f in dataclasses.fields(StreamingSettings))
# What the closed-form kinds (mean_difference, lda) do not read: they fit no logistic regression.
LOGISTIC_ONLY = (
    "probe.regularization",
    "probe.penalty",
    "probe.standardize",
    "probe.cv_folds",
    "probe.max_iterations",
    *(name for name in PYTORCH_ONLY if name.startswith("probe.")),
    *SKLEARN_ONLY,
)
LDA_ONLY = ("probe.shrinkage",)


def ignored_settings(config: ProbeTrainingConfig, backend: str, placement: Placement | None) -> str | None:
    """One line naming (`name=value`) every chosen setting that the fit with `config` on `backend` (at
    `placement`, for the pytorch backend) does not use, and why; None when it uses them all."""
    chosen = _chosen(config)
    if config.kind is not ProbeKind.logistic:
        unused = [f"{name}={value}" for name, value in chosen.items() if name in LOGISTIC_ONLY]
        if config.kind is not ProbeKind.lda:
            unused += [f"{name}={value}" for name, value in chosen.items() if name in LDA_ONLY]
        reasons = [(unused, f"probe.kind={config.kind.value} is computed in closed form")]
    elif backend == "sklearn":
        unused = [f"{name}={value}" for name, value in chosen.items() if name in (*PYTORCH_ONLY, *STREAMING)]
        if config.precision not in (None, "32"):
            unused.insert(0, f"precision={config.precision}")
        reasons = [(unused, "the sklearn backend fits in memory on the CPU with its own solver")]
    else:
        reasons = [([f"{name}={value}" for name, value in chosen.items() if name in SKLEARN_ONLY], "sklearn only")]
        if placement is not None and placement.full_batch:
            # A streamed full-batch split reads with data.num_workers threads, data.read_mb at a time.
            unread = STREAMING if placement.train_resident else ("data.shuffle_reads",)
            adamw = [f"{name}={value}" for name, value in chosen.items() if name in (*ADAMW_ONLY, *unread)]
            reasons.append((adamw, "minibatch AdamW only; this fit is full-batch L-BFGS"))
    if config.kind is ProbeKind.logistic:
        reasons.append(
            ([f"{name}={value}" for name, value in chosen.items() if name in LDA_ONLY], "probe.kind=lda only")
        )
    parts = [f"{', '.join(names)} ({why})" for names, why in reasons if names]
    return f"settings without effect, ignored: {'; '.join(parts)}" if parts else None


def ignored_trainer_flags(trainer: dict[str, Any], backend: str) -> str | None:
    """The same line for Lightning Trainer flags set (`trainer.<flag>=`, the trainer group's non-null
    values) for a fit on a backend that builds no Trainer; None when there are none."""
    flags = [f"trainer.{name}={value}" for name, value in trainer.items() if name != "_target_" and value is not None]
    if backend == "pytorch" or not flags:
        return None
    return f"settings without effect, ignored: {', '.join(flags)} (Lightning's Trainer: the pytorch backend only)"


def _chosen(config: ProbeTrainingConfig) -> dict[str, Any]:
    """The command-line names and values of config's settings that differ from their defaults (a
    command-line name's last part is the config's field)."""
    default = ProbeTrainingConfig()
    values = {}
    for name in dict.fromkeys((*PYTORCH_ONLY, *SKLEARN_ONLY, *LOGISTIC_ONLY, *LDA_ONLY)):
        field_name = name.rsplit(".", 1)[1]
        value = getattr(config, field_name)
        if value != getattr(default, field_name):
            values[name] = getattr(value, "value", value)
    for field in dataclasses.fields(StreamingSettings):
        value = getattr(config.streaming, field.name)
        if value != getattr(default.streaming, field.name):
            values[f"data.{field.name}"] = value
    return values
