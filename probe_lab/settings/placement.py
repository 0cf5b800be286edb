"""The one placement decision of a fit: device, Lightning precision, memory budget, and where the
training split lives.

`decide_placement` is called once per run (by `probe_lab.run`, before any data is read) or once per
fit (by the Python API, from the datasets it was given); everything downstream — loading the data,
the store's scan, the DataModule, the optimizer, the Lightning Trainer — follows the `Placement` it
returns and never decides again.

The rules, with B the memory budget (`device.memory_budget_gb`, else half the GPU's memory on CUDA,
half of MemAvailable on the CPU), H the host budget (`device.host_budget_gb`, else half of
MemAvailable), and sizes in the data's stored dtype:
- the optimizer is full-batch L-BFGS (sklearn's optimizer, whatever the data's size) unless
  `probe.optimizer=adamw` asks for minibatch AdamW;
- for L-BFGS the training split is *resident* (read whole onto the training device once) when it fits
  B — on a GPU together with the validation split, which is then held beside it; otherwise, on a GPU,
  it is held in pinned *host* memory when it fits H and copied to the GPU block by block at every
  evaluation; otherwise it is *streamed*: read from where it is stored at every evaluation. On a GPU,
  as much of such a split as B holds stays on the GPU, and only the rest is copied or read at each
  evaluation. Every home gives the same evaluations, so the same probe;
- AdamW's minibatches are always streamed from where the data is stored;
- on a GPU with a resident training split, every split (train, validation, test) is loaded onto the
  GPU once when they fit B together, so training, validation and scoring never touch the host;
- a single-layer store is then copied onto the GPU by the scan that verifies it (one read of the
  store) when twice the store fits B: the whole store is held until its splits are copied out.

With `data.layer=all`, a multi-layer store or .npy array is read once, in one pass, and held in host
memory for every layer's fit when all its layers fit H (`holds_every_layer`); otherwise each layer is
read on its own from where it is stored.

A data-parallel fit (`Processes`: `trainer.devices` × `trainer.num_nodes` processes) is decided the
same way for one process's shard of the training and validation rows, against one device's B; the
defaults of B on the CPU and of H (half the available RAM) are shared by the processes of a node.
Its splits stay on the host until each process holds its own shard, and its device is bound per
process (`for_process`) once the Trainer has said which device each process drives.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from probe_lab.errors import ProbeLabError
from probe_lab.settings.parallel import ONE_PROCESS, Processes
from probe_lab.settings.probe import OptimizerName
from probe_lab.settings.training import ProbeTrainingConfig

log = logging.getLogger(__name__)


class DataHome(StrEnum):
    resident = "resident"  # read whole onto the training device once
    host = "host"  # a GPU fit: held in pinned host memory, copied to the GPU block by block at each pass
    streamed = "streamed"  # read from where it is stored (disk, mapped files) at each pass


@dataclass(frozen=True)
class SplitBytes:
    """Sizes the placement is decided from, in the stored dtype. store: a single-layer store's whole
    size, when its scan could copy it onto a GPU (None for other data)."""

    train: int
    val: int
    test: int = 0
    store: int | None = None

    @classmethod
    def of_rows(
        cls, rows: int, row_bytes: int, validation_split: float, test_split: float, *, store: bool = False
    ) -> SplitBytes:
        """The sizes of `rows` rows split as `probe_lab.data.splits.split_dataset` splits them."""
        n_val, n_test = round(rows * validation_split), round(rows * test_split)
        n_train = rows - n_val - n_test
        return cls(n_train * row_bytes, n_val * row_bytes, n_test * row_bytes, rows * row_bytes if store else None)


@dataclass(frozen=True)
class Placement:
    """Where and how one fit runs. See the module docstring for the rules that produce it."""

    device: torch.device  # the training device: the CPU or one GPU (for a data-parallel fit, this process's)
    precision: str  # Lightning's precision for the run ("32", "16-mixed", "bf16-mixed")
    budget_bytes: int
    train_home: DataHome
    splits_on_device: bool  # every split loaded onto the GPU once
    scan_onto_device: bool  # a store's scan copies it onto the GPU as it reads
    optimizer: OptimizerName = OptimizerName.lbfgs  # lbfgs (full batch) or adamw (minibatches)
    train_bytes: int = 0  # the training split's size in its stored dtype (one process's shard of it)
    device_bytes: int = 0  # of a GPU fit's training split beyond the budget: the part kept on the GPU
    processes: Processes = ONE_PROCESS  # one, or the data-parallel group's

    def for_process(self, device: torch.device) -> Placement:
        """This placement for the process of a data-parallel fit that drives `device`."""
        return dataclasses.replace(self, device=device)

    @property
    def full_batch(self) -> bool:
        """Full-batch L-BFGS, wherever the training split lives (else AdamW on streamed minibatches)."""
        return self.optimizer is OptimizerName.lbfgs

    @property
    def train_resident(self) -> bool:
        return self.train_home is DataHome.resident

    @property
    def val_beside_train(self) -> bool:
        """Full batch on a GPU with the training split resident: the validation split is held whole there too."""
        return self.full_batch and self.train_resident and self.device.type == "cuda"

    @property
    def trainer_precision(self) -> str:
        """The Trainer's precision. Lightning's float16 AMP cannot serve a full-batch optimizer that calls
        its own closure (its gradient scaler would step without the closure and scale the loss the line
        search reads); the probe accumulates in float32 whatever the stored dtype, so a full-batch fit
        with 16-mixed keeps float16 data while its Trainer runs in 32-bit."""
        return "32" if self.full_batch and self.precision == "16-mixed" else self.precision

    @property
    def accelerator(self) -> str:
        return "cuda" if self.device.type == "cuda" else "cpu"

    @property
    def lightning_devices(self) -> list[int] | int:
        """Lightning's `devices`: the one GPU by index, or 1 (the CPU); for a data-parallel fit, the
        number of processes per node."""
        if self.processes.data_parallel:
            return self.processes.devices
        return [self.device.index or 0] if self.device.type == "cuda" else 1

    def describe(self) -> str:
        """The placement in one line, for the run's log and summary."""
        where = "on the device" if self.splits_on_device else "on the host"
        kept = f" ({size_text(self.device_bytes)} of it kept on the device)" if self.device_bytes else ""
        count = self.processes.count
        shard = f" per process ({count} processes, one shard each)" if count > 1 else ""
        return (
            f"{self.device}, precision {self.precision}, {self.optimizer.value}; training split "
            f"{size_text(self.train_bytes)}{shard} {self.train_home.value}{kept}, splits held {where}, "
            f"memory budget {self.budget_bytes / 1e9:.1f} GB"
        )

    def to_dict(self) -> dict[str, Any]:
        """What metrics.json records of the placement."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "optimizer": self.optimizer.value,
            "train": self.train_home.value,
            "splits_on_device": self.splits_on_device,
            "scan_onto_device": self.scan_onto_device,
            "memory_budget_gb": self.budget_bytes / 1e9,
            "train_gb": self.train_bytes / 1e9,
            "train_on_device_gb": (self.train_bytes if self.train_resident else self.device_bytes) / 1e9,
            "processes": self.processes.count,
        }


def size_text(n_bytes: float) -> str:
    """A size for people: GB from 0.1 GB up, else MB."""
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def decide_placement(
    config: ProbeTrainingConfig,
    sizes: SplitBytes,
    *,
    backend: str = "pytorch",
    processes: Processes = ONE_PROCESS,
) -> Placement:
    """The placement of a fit with `config` on data of these sizes (see the module docstring), in
    `processes` (one by default; the sklearn backend always fits in one).

    The sklearn backend fits in host memory: its placement is the CPU, 32-bit, resident, whatever
    `config.device` asks for.
    """
    if backend == "sklearn":
        cpu = torch.device("cpu")
        budget = memory_budget(config.memory_budget_gb, cpu)
        return Placement(cpu, "32", budget, DataHome.resident, False, False, train_bytes=sizes.train)
    device = training_device(config.device)
    if processes.data_parallel and device.index:
        raise ProbeLabError(
            f"device={config.device} names one GPU, but trainer.devices={processes.devices} asks for "
            f"{processes.devices} processes per node, which use GPUs 0 to {processes.devices - 1}: use device=cuda"
        )
    if processes.data_parallel and config.optimizer is OptimizerName.adamw:
        raise ProbeLabError(
            "probe.optimizer=adamw trains in one process: a data-parallel fit (trainer.devices, "
            "trainer.num_nodes) is full-batch L-BFGS (probe.optimizer=auto or lbfgs)"
        )
    precision = resolve_precision(config, device)
    on_gpu = device.type == "cuda"
    node_share = processes.devices  # the processes of a node share its RAM
    budget = memory_budget(config.memory_budget_gb, device, share=1 if on_gpu else node_share)
    per_process = -(-sizes.train // processes.count), -(-sizes.val // processes.count)
    train_bytes, val_bytes = per_process
    optimizer = OptimizerName.adamw if config.optimizer is OptimizerName.adamw else OptimizerName.lbfgs
    if optimizer is OptimizerName.adamw:
        home = DataHome.streamed
    elif train_bytes + (val_bytes if on_gpu else 0) <= budget:
        home = DataHome.resident
    elif on_gpu and train_bytes <= host_budget(config.host_budget_gb, share=node_share):
        home = DataHome.host
    else:
        home = DataHome.streamed
    splits_on_device = (
        on_gpu
        and not processes.data_parallel
        and home is DataHome.resident
        and sizes.train + sizes.val + sizes.test <= budget
    )
    scan = splits_on_device and sizes.store is not None and 2 * sizes.store <= budget
    # What the budget holds of a split beyond it stays on the GPU; only the rest is copied at each pass.
    beyond = on_gpu and optimizer is OptimizerName.lbfgs and home is not DataHome.resident
    kept = min(train_bytes, budget) if beyond else 0
    return Placement(device, precision, budget, home, splits_on_device, scan, optimizer, train_bytes, kept, processes)


def training_device(requested: str) -> torch.device:
    """ "cpu", "cuda" / "auto" (the first GPU when CUDA is present, else the CPU) or "cuda:K".
    Asking for CUDA on a machine without it gives the CPU, with a warning (once per process)."""
    kind, _, index = requested.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ProbeLabError(f"device must be auto, cpu, cuda or cuda:<index>, got {requested!r}")
    available = torch.cuda.is_available()
    if kind == "cuda" and not available:
        warn_once("device=cuda requested but no CUDA device is available; using the CPU")
    if kind == "cpu" or not available:
        return torch.device("cpu")
    return torch.device("cuda", int(index) if index else 0)


def resolve_precision(config: ProbeTrainingConfig, device: torch.device) -> str:
    """`config.precision` when given, else 16-mixed on CUDA with `use_mixed_precision` and 32 otherwise;
    16-mixed needs CUDA, so on the CPU it gives 32, with a warning (once per process)."""
    requested = config.precision
    if requested is None:
        requested = "16-mixed" if config.use_mixed_precision and device.type == "cuda" else "32"
    if requested == "16-mixed" and device.type != "cuda":
        warn_once("precision=16-mixed needs CUDA; using 32 on the CPU (bf16-mixed works on CPUs)")
        return "32"
    return requested


@functools.cache
def warn_once(message: str) -> None:
    """A fallback warning, logged the first time only: the Python API decides a placement per fit, and
    a script fitting many probes would otherwise repeat it for each."""
    log.warning(message)


def holds_every_layer(nbytes: int, host_budget_gb: float | None, *, share: int = 1) -> bool:
    """`data.layer=all`: whether a source's every layer (`nbytes` as held) is read in one pass and
    held in host memory for the layers' fits: when it fits the host budget H (its default shared by
    the `share` processes of a node, each of which holds its own copy)."""
    return nbytes <= host_budget(host_budget_gb, share=share)


def host_budget(configured_gb: float | None, *, share: int = 1) -> int:
    """Bytes of pinned host memory a training split beyond the device's budget may be held in: the
    configured GB, or half the available RAM divided among `share` processes."""
    return int(configured_gb * 1e9) if configured_gb is not None else available_ram() // 2 // share


def memory_budget(configured_gb: float | None, device: torch.device, *, share: int = 1) -> int:
    """Bytes of activations the device may hold: the configured GB, or half the device's memory
    (total GPU memory on CUDA, available RAM on the CPU divided among `share` processes)."""
    if configured_gb is not None:
        return int(configured_gb * 1e9)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory // 2
    return available_ram() // 2 // share


def available_ram() -> int:
    """Bytes of RAM available to a new allocation: MemAvailable (free memory plus the page cache the
    kernel can drop), so the answer does not swing with what happens to be cached."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
