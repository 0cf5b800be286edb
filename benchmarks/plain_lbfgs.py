"""Plain full-batch L-BFGS on a `ProbeModule`'s objective with the module's own optimizer (scipy's
L-BFGS-B), no Lightning and no CUDA graph: the reference the benchmarks hold probe_lab's Lightning
loop against (imported by backends_cpu.py and gpu_scale.py)."""

from __future__ import annotations

import time

import torch

from probe_lab.fit.module import ProbeModule


def minimize(module: ProbeModule, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """Run the module's L-BFGS to convergence on (x, y); returns (seconds, objective evaluations)."""
    optimizer = module.configure_optimizers()
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad()
        loss = module.loss(x, y)
        loss.backward()
        return loss

    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    optimizer.step(closure)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start, evaluations
