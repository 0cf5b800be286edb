"""Full-batch L-BFGS over the shards of a data-parallel fit (Lightning's DDP strategy).

Each process holds a contiguous shard of the training rows (`Shard`; no DistributedSampler,
whose padding would repeat rows and change the objective). Every evaluation goes the same way:
1. process 0's L-BFGS-B proposes a point and one broadcast sends it, with a flag that says "evaluate"
   (`LBFGSControl.propose` / `receive`);
2. every process computes its rows' loss sum and gradient, divided by the whole split's row count,
   and one all-reduce (SUM, float64) adds them up (`DataParallelEvaluation`);
3. the penalty is added once, on every process, from the same weights.
When process 0's L-BFGS-B stops, a last broadcast sends the "stop" flag with the final point and the
outcome (`LBFGSControl.finish`), so every process ends on the same probe after the same evaluations,
and no process can wait for a collective the others will never call.

`FitGroup` runs the collectives on torch.distributed's default group (the one Lightning's strategy
set up) and turns a failure of another process — a closed connection, or no answer within
`device.collective_timeout_s` — into one `ProbeLabError` line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from probe_lab.errors import ProbeLabError


@dataclass(frozen=True)
class Shard:
    """The contiguous `rows` of a split of `of` rows that one process of a data-parallel fit holds."""

    rows: range
    of: int

    @classmethod
    def of_process(cls, n_rows: int, rank: int, processes: int) -> Shard:
        """Process `rank`'s shard of `n_rows` rows: shards differ in size by at most one row, the first
        `n_rows % processes` being the longer."""
        base, extra = divmod(n_rows, processes)
        start = rank * base + min(rank, extra)
        return cls(range(start, start + base + (rank < extra)), n_rows)


class FitGroup:
    """The processes of a data-parallel fit (torch.distributed's default group), with the collectives
    the fit needs on tensors on `device` (the CPU with gloo, this process's GPU with NCCL).
    `seconds` accumulates the host time spent in them."""

    def __init__(self, device: torch.device) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("FitGroup needs torch.distributed's default process group")
        self.rank, self.size, self.device = dist.get_rank(), dist.get_world_size(), device
        self.seconds = 0.0

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        self._run(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))

    def broadcast(self, tensor: torch.Tensor) -> None:
        """`tensor` of process 0 into every process's `tensor`."""
        self._run(lambda: dist.broadcast(tensor, src=0))

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's `tensor` (same shape everywhere), stacked in rank order."""
        gathered = [torch.empty_like(tensor) for _ in range(self.size)]
        self._run(lambda: dist.all_gather(gathered, tensor))
        return torch.stack(gathered)

    def _run(self, collective: Callable[[], object]) -> None:
        start = time.perf_counter()
        try:
            collective()
        except (RuntimeError, dist.DistError) as err:
            if not is_collective_failure(err):
                raise
            raise lost_process(self.rank, self.size, err) from None
        self.seconds += time.perf_counter() - start


def is_collective_failure(err: BaseException) -> bool:
    """Whether `err` is a collective that failed because another process did (NCCL raises DistError
    and its subclasses; gloo a RuntimeError from its transport) rather than an error of this process."""
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and "gloo" in str(err))


def lost_process(rank: int, size: int, err: BaseException) -> ProbeLabError:
    """The one line a process of a data-parallel fit stops with when a collective failed."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ProbeLabError(
        f"process {rank} of {size}: the data-parallel fit stopped because another process failed or did "
        f"not answer within device.collective_timeout_s ({reason})"
    )


@dataclass(frozen=True)
class LBFGSOutcome:
    """How process 0's L-BFGS-B ended, as every process learns it."""

    loss: float
    iterations: int
    evaluations: int
    status: int
    converged: bool


class LBFGSControl:
    """Process 0 drives L-BFGS-B; the others evaluate the points it sends until it says stop.

    One message per evaluation, [flag, loss, iterations, evaluations, status, converged, *point] in
    float64 (the point's float32 entries are exact in it), broadcast from process 0."""

    _EVALUATE, _STOP = 1.0, 0.0
    _HEADER = 6

    def __init__(self, group: FitGroup, params: list[torch.Tensor]) -> None:
        self.group, self.params = group, params
        self.sizes = [p.numel() for p in params]

    @property
    def leads(self) -> bool:
        return self.group.leads

    def propose(self) -> None:
        """Process 0: every process evaluates the parameters' current values next."""
        self._send(torch.tensor([self._EVALUATE, 0, 0, 0, 0, 0], dtype=torch.float64))

    def finish(self, outcome: LBFGSOutcome) -> None:
        """Process 0: L-BFGS-B stopped at the parameters' current values."""
        header = [self._STOP, outcome.loss, outcome.iterations, outcome.evaluations, outcome.status, outcome.converged]
        self._send(torch.tensor(header, dtype=torch.float64))

    def receive(self) -> LBFGSOutcome | None:
        """The other processes: load process 0's next point into the parameters; None means evaluate
        it, an outcome means L-BFGS-B stopped there."""
        message = torch.empty(self._HEADER + sum(self.sizes), dtype=torch.float64, device=self.group.device)
        self.group.broadcast(message)
        self._load(message[self._HEADER :])
        header = message[: self._HEADER].tolist()
        if header[0] == self._EVALUATE:
            return None
        return LBFGSOutcome(header[1], int(header[2]), int(header[3]), int(header[4]), bool(header[5]))

    def _send(self, header: torch.Tensor) -> None:
        point = [p.detach().reshape(-1).double() for p in self.params]
        self.group.broadcast(torch.cat([header.to(self.group.device), *point]))

    @torch.no_grad()
    def _load(self, flat: torch.Tensor) -> None:
        for param, chunk in zip(self.params, flat.split(self.sizes), strict=True):
            param.copy_(chunk.view_as(param))


class DataParallelEvaluation:
    """The full-batch objective over every process's shard: `local()` returns this process's rows'
    loss sum divided by the whole split's row count and leaves its gradient in the parameters' `.grad`
    (an `Evaluation` or `StreamedEvaluation` without the penalty); one all-reduce adds them up, then
    `penalty()` is added. Same contract as `Evaluation`."""

    def __init__(
        self, module: nn.Module, local: Callable[[], torch.Tensor], penalty: Callable[[], torch.Tensor], group: FitGroup
    ) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.local, self.penalty, self.group = local, penalty, group
        self.sizes = [p.numel() for p in self.params]

    @property
    def capture_seconds(self) -> float:
        return getattr(self.local, "capture_seconds", 0.0)

    def __call__(self) -> torch.Tensor:
        loss = self.local()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([loss.detach().reshape(1).double(), *(g.reshape(-1).double() for g in grads)])
        self.group.all_reduce_sum(flat)
        with torch.enable_grad():
            penalty = self.penalty()
            parts = torch.autograd.grad(penalty, self.params, allow_unused=True)
        for param, total, part in zip(self.params, flat[1:].split(self.sizes), parts, strict=True):
            grad = total.view_as(param).to(param.dtype)
            param.grad = grad if part is None else grad + part
        return flat[0] + penalty.detach()
