"""How many processes a pytorch fit runs in: one, or a data-parallel group on Lightning's DDP strategy.

The Trainer flags `trainer.devices=N`, `trainer.num_nodes=M` and `trainer.strategy=ddp` ask for
N × M processes (N per node), each training on a contiguous shard of the training rows. The flags stay
Lightning's: probe_lab reads them here, once, so that the placement sizes each process's shard, and
builds the DDP strategy itself (`probe_lab.fit.trainer`). Strategies other than DDP are refused:
full-batch L-BFGS over sharded rows needs every process to hold distinct rows (no DistributedSampler
padding) and one all-reduce per evaluation, which is what probe_lab's data-parallel fit does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from probe_lab.errors import ProbeLabError

DATA_PARALLEL_STRATEGIES = ("auto", "ddp")
# Seconds a collective (including the processes' first rendezvous) waits for the other processes
# before it gives up with an error: a process that died ends the others instead of hanging them.
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Processes:
    """The fit's processes: `devices` per node on `nodes` nodes."""

    devices: int = 1
    nodes: int = 1

    @property
    def count(self) -> int:
        return self.devices * self.nodes

    @property
    def data_parallel(self) -> bool:
        return self.count > 1

    @classmethod
    def from_trainer_flags(cls, flags: dict[str, Any]) -> Processes:
        """The processes `trainer.devices`, `trainer.num_nodes` and `trainer.strategy` ask for (unset
        flags: one process)."""
        strategy = flags.get("strategy")
        if strategy is not None and str(strategy) not in DATA_PARALLEL_STRATEGIES:
            raise ProbeLabError(
                f"trainer.strategy={strategy} is not supported: a probe trains in one process, or with "
                "trainer.strategy=ddp on trainer.devices processes per node"
            )
        devices, nodes = _count(flags, "devices"), _count(flags, "num_nodes")
        return cls(devices, nodes)


ONE_PROCESS = Processes()


def _count(flags: dict[str, Any], name: str) -> int:
    value = flags.get(name)
    if value is None:
        return 1
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise ProbeLabError(
            f"trainer.{name}={value}: give a number of processes (1 or more); the GPUs of a node are "
            "used in order, one per process"
        )
    return number


def follower_process() -> bool:
    """Whether this process is one of a data-parallel group's other than the first (rank 0), as its
    launcher says in the environment: torchrun's RANK, Lightning's own launcher's LOCAL_RANK and
    NODE_RANK, SLURM's SLURM_PROCID in a step of several tasks. Such a process trains its shard and
    writes nothing: no files, no log, nothing on the console but its error line if it fails."""
    env = os.environ
    ranks = [env.get(name, "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK")]
    if _number(env.get("SLURM_NTASKS", "1")) > 1:
        ranks.append(env.get("SLURM_PROCID", "0"))
    return any(_number(rank) > 0 for rank in ranks)


def _number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def launched_processes() -> int:
    """How many processes a launcher started for this command (torchrun's and Lightning's WORLD_SIZE,
    SLURM's SLURM_NTASKS); 1 when it was started on its own."""
    env = os.environ
    return max(_number(env.get("WORLD_SIZE", "1")), _number(env.get("SLURM_NTASKS", "1")), 1)
