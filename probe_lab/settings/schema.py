"""The Hydra app's typed schemas, registered in Hydra's ConfigStore.

What probe_lab owns (`backend`, `device`, `precision`, `model`, `probe`, `data/<source>`) is typed:
every option's YAML under conf/ is merged onto these dataclasses, so a wrong type or an unknown enum
value fails at composition, naming the key, before any work starts; cross-field rules run when the
config becomes these objects (`OmegaConf.to_object`, which runs each `__post_init__`). What Lightning
owns (`trainer`, `callbacks`, `logger`) is left as Hydra nodes with a `_target_`, built by
`probe_lab.lightning_parts` with `hydra.utils`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from probe_lab.errors import ProbeLabError
from probe_lab.settings.data import SCHEMAS, DataSettings
from probe_lab.settings.evaluation import EvalSettings
from probe_lab.settings.extract import ExtractConfig
from probe_lab.settings.parallel import DEFAULT_COLLECTIVE_TIMEOUT_S
from probe_lab.settings.probe import ProbeSettings
from probe_lab.settings.training import PRECISIONS


class BackendName(StrEnum):
    auto = "auto"
    sklearn = "sklearn"
    pytorch = "pytorch"


class DeviceName(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class BackendConfig:
    """`auto` resolves by model size: sklearn below `threshold_b` billion parameters, else pytorch."""

    name: BackendName = BackendName.auto
    threshold_b: float = field(
        default=34.0, metadata={"help": "billions of parameters: sklearn below, pytorch at or above"}
    )

    def __post_init__(self) -> None:
        if self.threshold_b <= 0:
            raise ProbeLabError(f"backend.threshold_b must be positive, got {self.threshold_b}")


@dataclass
class DeviceConfig:
    """memory_budget_gb: how much of the device's memory the training split may occupy, held whole for
    full-batch L-BFGS; beyond it each evaluation streams the split from pinned host memory or storage.
    null: half the device's memory (total GPU memory on CUDA, available RAM on the CPU).
    host_budget_gb: on a GPU, how much pinned host memory a training split beyond memory_budget_gb may
    be held in (null: half the available RAM; 0: none, the split is read from storage at every pass);
    with data.layer=all, how large a multi-layer source may be to be read in one pass and held.
    collective_timeout_s: in a data-parallel fit, how long a process waits for the others (to start,
    and at each evaluation's all-reduce) before it stops with an error instead of hanging."""

    name: DeviceName = DeviceName.auto
    memory_budget_gb: float | None = None
    host_budget_gb: float | None = None
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise ProbeLabError(f"device.memory_budget_gb must be positive, got {self.memory_budget_gb}")
        if self.host_budget_gb is not None and not self.host_budget_gb >= 0:
            raise ProbeLabError(f"device.host_budget_gb must be >= 0, got {self.host_budget_gb}")
        if not self.collective_timeout_s > 0:
            raise ProbeLabError(f"device.collective_timeout_s must be positive, got {self.collective_timeout_s}")


@dataclass
class PrecisionConfig:
    """Lightning's precision names, or `auto`: 16-mixed on CUDA, 32 on the CPU."""

    name: str = "auto"

    def __post_init__(self) -> None:
        self.name = str(self.name)
        if self.name not in ("auto", *PRECISIONS):
            raise ProbeLabError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {self.name!r}")


@dataclass
class ModelConfig:
    """The model whose activations are probed: its size drives the backend choice."""

    name: str = "default"
    size_b: float = 7.0
    hidden_dim: int | None = None

    def __post_init__(self) -> None:
        if self.size_b <= 0:
            raise ProbeLabError(f"model.size_b must be positive, got {self.size_b}")


@dataclass
class RunConfig:
    """trainer / callbacks / logger: Lightning's pieces as Hydra nodes (`probe_lab.lightning_parts`)."""

    backend: BackendConfig = field(default_factory=BackendConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    data: DataSettings = field(default_factory=DataSettings)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    trainer: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    progress_bar: bool = True
    parity: bool = False  # experiment=parity: train both backends on the same data and compare them
    resume: bool = False  # go on from the checkpoints a stopped run of the same command left in its run folder

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ProbeLabError(f"seed must be >= 0, got {self.seed}")


@dataclass
class PredictConfig:
    """`python -m probe_lab.predict probe=<run folder or .safetensors> data=...`."""

    probe_path: str = MISSING  # given on the command line as probe=PATH
    data: DataSettings = field(default_factory=DataSettings)
    allow_other_layer: bool = False  # score a data.layer other than the one the probe was trained on
    threshold: float | None = None  # a probability; None: the training run's balanced validation threshold
    at_fpr: float | None = None  # instead, the training run's threshold at this false-positive rate
    seed: int = 42


def register_configs() -> None:
    """The app schemas, one schema per data source (`data/<source>_schema`, which each
    conf/data/<source>.yaml names first in its defaults), and the resolver the SLURM launcher uses."""
    # hydra/launcher=slurm's tasks and GPUs per node: trainer.devices, one when unset.
    OmegaConf.register_new_resolver(
        "probe_lab.per_node", lambda devices: 1 if devices is None else int(devices), replace=True
    )
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="predict_schema", node=PredictConfig)
    store.store(name="extract_schema", node=ExtractConfig)
    for source, schema in SCHEMAS.items():
        store.store(group="data", name=f"{source.value}_schema", node=schema)


def to_settings(cfg: DictConfig, schema: type) -> Any:
    """The composed config as its dataclass (running each `__post_init__` check), or a one-line error.

    A key no schema declares is refused here too: Hydra adds `+key=value` overrides even to a struct
    node, and `OmegaConf.to_object` would drop such a key without a word (`unknown_key`)."""
    unknown = unknown_key(cfg)
    if unknown is not None:
        raise ProbeLabError(unknown)
    try:
        settings = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        message = str(err).strip().splitlines()[0]
        raise ProbeLabError(f"invalid setting{f' {key}' if key else ''}: {message}") from None
    if not isinstance(settings, schema):
        raise ProbeLabError(f"the composed config is not a {schema.__name__}")
    return settings


def unknown_key(node: DictConfig, prefix: str = "") -> str | None:
    """A message naming the first key of `node` (or a node under it) that its dataclass schema does not
    declare, with the closest declared key; None when every key is declared. Nodes typed as plain
    dicts (trainer, callbacks, logger) are open: any key goes there."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return None
    declared = [f.name for f in dataclasses.fields(schema)]
    for key in node:
        name = f"{prefix}{key}"
        if key not in declared:
            close = difflib.get_close_matches(str(key), declared, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known: {', '.join(declared)}"
            return f"unknown setting {name} ({hint})"
        child = None if OmegaConf.is_missing(node, key) else node[key]
        if isinstance(child, DictConfig):
            found = unknown_key(child, f"{name}.")
            if found is not None:
                return found
    return None
