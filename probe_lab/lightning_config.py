"""Lightning's config groups — `trainer`, `callbacks`, `logger` — built into `LightningParts` with
Hydra's `instantiate`, as lightning-hydra-template users know them.

- `trainer`: a node with `_target_` (a Trainer class) and Trainer flags; flags left null are not
  passed (probe_lab's defaults or Lightning's apply).
- `callbacks`: named nodes, each built from its `_target_`; a node set to null is left out.
- `logger`: named nodes likewise; a logger whose `save_dir` is null writes into the run folder.

`check_lightning_settings` refuses what can be refused without building anything; a run calls it
before it reads its data, so a mistyped class name costs no read of a store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.errors import InstantiationException
from hydra.utils import get_class, get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from probe_lab.errors import ProbeLabError
from probe_lab.fit.trainer import LightningParts


def check_lightning_settings(cfg: DictConfig) -> None:
    """The trainer / callbacks / logger groups of `cfg` checked, nothing built: the Trainer class is a
    Lightning Trainer, no Trainer flag sets what probe_lab decides, and every callback and logger names
    a `_target_` that can be imported. What only building reveals (a bad argument, a missing optional
    package) is refused by `lightning_parts`."""
    LightningParts(_trainer_class(cfg), _trainer_options(cfg))  # checks the flags
    for group in ("callbacks", "logger"):
        for name, node in _named(cfg, group):
            try:
                get_object(node._target_)
            except Exception as err:  # whatever importing the named module raises
                raise ProbeLabError(f"{group}.{name} ({node._target_}) cannot be built: {_first_line(err)}") from None


def lightning_parts(cfg: DictConfig, run_folder: Path) -> LightningParts:
    """The composed trainer / callbacks / logger groups of `cfg`; loggers without a save_dir write
    into `run_folder`."""
    trainer_class, options = _trainer_class(cfg), _trainer_options(cfg)
    callbacks = [_build(f"callbacks.{name}", node) for name, node in _named(cfg, "callbacks")]
    loggers = [
        _build(f"logger.{name}", node, save_dir=str(run_folder) if node.get("save_dir") is None else None)
        for name, node in _named(cfg, "logger")
    ]
    return LightningParts(trainer_class, options, callbacks, loggers)


def _trainer_class(cfg: DictConfig) -> type[pl.Trainer]:
    target = _trainer_node(cfg).get("_target_", "lightning.pytorch.Trainer")
    try:
        trainer_class = get_class(target)
    except (ImportError, ValueError) as err:
        raise ProbeLabError(f"trainer._target_={target}: {_first_line(err)}") from None
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, pl.Trainer)):
        raise ProbeLabError(f"trainer._target_={target} is not a Lightning Trainer")
    return trainer_class


def _trainer_options(cfg: DictConfig) -> dict[str, Any]:
    """The Trainer flags set (not null), without `_target_`."""
    flags = OmegaConf.to_container(_trainer_node(cfg), resolve=True)
    assert isinstance(flags, dict)
    return {str(name): value for name, value in flags.items() if name != "_target_" and value is not None}


def _trainer_node(cfg: DictConfig) -> DictConfig:
    return cfg.get("trainer") or OmegaConf.create({})


def _named(cfg: DictConfig, group: str) -> list[tuple[str, DictConfig]]:
    nodes = cfg.get(group) or {}
    named = [(str(name), node) for name, node in nodes.items() if node is not None]
    for name, node in named:
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ProbeLabError(f"{group}.{name} needs a _target_ (the class to build)")
    return named


def _build(key: str, node: DictConfig, **overrides: Any) -> Any:
    overrides = {name: value for name, value in overrides.items() if value is not None}
    try:
        return instantiate(node, **overrides)
    except InstantiationException as err:
        raise ProbeLabError(f"{key} ({node._target_}) cannot be built: {_first_line(err.__cause__ or err)}") from None


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__
