"""One evaluation of a full-batch objective and its gradient, called once per L-BFGS evaluation.

On a GPU the evaluation is captured once as a CUDA graph and replayed: an evaluation is a couple of
reads of the resident data plus dozens of small kernels, which launched one by one from Python cost
more than the reads (benchmarks/gpu_scale.py). On the CPU, or when this build cannot capture, it
runs eagerly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)


class Evaluation:
    """`objective()` → a scalar loss tensor of `module`'s trainable parameters; calling this object
    returns the loss and leaves the gradient in the parameters' `.grad`, as an L-BFGS closure does.

    The first call on a GPU runs eagerly on a side stream — the warm-up capture needs (lazy cuBLAS
    and autograd set-up happen outside the graph) — then captures the graph there; later calls
    replay it. The parameters keep their storage (the optimizer writes them in place), so the graph
    stays valid. `capture_seconds` is the host time the capture took.
    """

    def __init__(self, module: nn.Module, objective: Callable[[], torch.Tensor], device: torch.device) -> None:
        self.objective = objective
        self.device = device
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager = device.type != "cuda"
        self.capture_seconds = 0.0

    def loss_and_grads(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        with torch.enable_grad():
            loss = self.objective()
            return loss.detach(), torch.autograd.grad(loss, self.params)

    def __call__(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            loss, grads = self.loss, self.grads
        elif self.eager:
            loss, grads = self.loss_and_grads()
        else:
            loss, grads = self._first_evaluation()
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = grad  # the optimizer copies gradients out before the next replay
        return loss

    def _first_evaluation(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        side = _capture_stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            result = self.loss_and_grads()
            start = time.perf_counter()
            graph = torch.cuda.CUDAGraph()
            try:
                # capture_begin/end rather than the torch.cuda.graph context, which collects garbage
                # and empties the allocator's cache before every capture.
                graph.capture_begin()
                try:
                    loss, grads = self.loss_and_grads()
                except BaseException:
                    with contextlib.suppress(RuntimeError):  # keep the capture's own error
                        graph.capture_end()
                    raise
                graph.capture_end()
                self.loss, self.grads, self.graph = loss, grads, graph
            except RuntimeError as err:
                reason = (str(err).splitlines() or [type(err).__name__])[0]
                log.warning("evaluating without a CUDA graph, which is slower (%s)", reason)
                self.eager = True
            self.capture_seconds = time.perf_counter() - start
        torch.cuda.current_stream(self.device).wait_stream(side)
        return result


@functools.cache
def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for capturing evaluations, kept for the process: cuBLAS sets up a
    workspace per stream, which a fresh stream would pay for at every fit."""
    return torch.cuda.Stream(device)


class StreamedEvaluation:
    """The full-batch objective over a split that is not held whole on the device: one pass over its
    blocks per call, each block's loss and gradient computed while the block is on the device and
    accumulated in float64 (loss) and float32 (gradient), then the penalty once. Same contract as
    `Evaluation`: returns the loss, leaves the gradient in the parameters' `.grad`.

    `loss_sum(x, y)` is Σ of the block's row losses (`ProbeObjective.loss_sum`), divided by `rows`;
    `penalty()` the penalty term (None: left to the caller, as a data-parallel fit adds it once after
    summing the processes' parts); `blocks` yields (x, y) on the device in the same order every pass.
    """

    def __init__(
        self,
        module: nn.Module,
        loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        penalty: Callable[[], torch.Tensor] | None,
        blocks: Iterable[tuple[torch.Tensor, torch.Tensor]],
        rows: int,
    ) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.loss_sum, self.penalty, self.blocks, self.rows = loss_sum, penalty, blocks, rows
        self.capture_seconds = 0.0  # nothing is captured: kept for the same report as `Evaluation`

    def __call__(self) -> torch.Tensor:
        grads = [torch.zeros_like(p) for p in self.params]
        total = torch.zeros((), dtype=torch.float64, device=self.params[0].device)
        with torch.enable_grad():
            for x, y in self.blocks:
                block_loss = self.loss_sum(x, y) / self.rows
                for grad, part in zip(grads, torch.autograd.grad(block_loss, self.params), strict=True):
                    grad += part
                total += block_loss.detach()
            if self.penalty is None:
                for param, grad in zip(self.params, grads, strict=True):
                    param.grad = grad
                return total
            penalty = self.penalty()
            parts = torch.autograd.grad(penalty, self.params, allow_unused=True)
        for param, grad, part in zip(self.params, grads, parts, strict=True):
            param.grad = grad if part is None else grad + part
        return total + penalty.detach()
