"""scipy's L-BFGS-B, the optimizer behind sklearn's lbfgs solver, as a torch optimizer.

One `step(closure)` minimizes to convergence. The closure computes the objective on the parameters'
device and leaves its gradient in their `.grad`, as torch.optim.LBFGS's closure does. The iterate,
the curvature history and the line search live on the host in float64: each evaluation copies the
parameters to the device and the loss and gradient back in one transfer each.

In a data-parallel fit (`control`, see `probe_lab.fit.distributed`) process 0 runs scipy and sends
each point to the other processes, whose `step` evaluates the points it receives until it stops.

Why not torch.optim.LBFGS: it keeps its history and line search on the device as hundreds of tiny
kernels per iteration, and its strong-Wolfe search reads device scalars one at a time, so on a GPU
its host-side work outweighs the evaluations (benchmarks/gpu_scale.py compares them). scipy's also
runs the same algorithm and line search as sklearn, whose optimum the pytorch backend has to reach.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import scipy.optimize
import torch
from threadpoolctl import ThreadpoolController

from probe_lab.fit.distributed import LBFGSControl, LBFGSOutcome

# scipy's L-BFGS-B status codes: 0 met a tolerance, 1 ran out of iterations or evaluations, 2 stopped
# abnormally (most often the line search found no further decrease).
STATUS_CONVERGED, STATUS_ABNORMAL = 0, 2
# An abnormal stop counts as convergence when the objective is finite and its largest gradient entry
# is within this factor of tolerance_grad: the line search then failed at the objective's rounding
# level (float32 products round the objective to about 1e-8), not far from the optimum.
ROUNDING_SLACK = 10.0


class ScipyLBFGSB(torch.optim.Optimizer):
    """L-BFGS-B (unbounded) over all parameters of one group, run by `scipy.optimize.minimize`.

    max_iter / max_eval: iteration and objective-evaluation budgets (max_eval defaults to 1.25 ×
    max_iter, torch.optim.LBFGS's default). tolerance_grad: stop when the largest gradient entry is at
    most this (torch's tolerance_grad, scipy's gtol). tolerance_change: stop when an iteration lowers
    the objective by at most this, relative to max(|f|, 1) (scipy's ftol). history_size: curvature
    pairs kept (scipy's maxcor). max_line_search: evaluations allowed per line search (maxls).

    Parameters are float32 or float64 (the iterate is rounded to their dtype at every evaluation).
    After `step`, `result` holds scipy's OptimizeResult (with `jac`, the gradient at `x`), and the
    state of the group's first parameter, as torch's L-BFGS keeps it, has `n_iter` and `func_evals`.
    control: in a data-parallel fit, how the processes share one run of L-BFGS-B (set by the module
    once the processes are up).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        max_iter: int = 100,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-6,
        tolerance_change: float = 1e-10,
        history_size: int = 10,
        max_line_search: int = 20,
    ) -> None:
        defaults = {
            "max_iter": max_iter,
            "max_eval": max_eval if max_eval is not None else max_iter * 5 // 4,
            "tolerance_grad": tolerance_grad,
            "tolerance_change": tolerance_change,
            "history_size": history_size,
            "max_line_search": max_line_search,
        }
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("ScipyLBFGSB optimizes one parameter group")
        trainable = [p for p in self.param_groups[0]["params"] if p.requires_grad]
        if not trainable:
            raise ValueError("ScipyLBFGSB needs at least one parameter that requires grad")
        if any(p.dtype not in (torch.float32, torch.float64) for p in trainable):
            raise ValueError("ScipyLBFGSB optimizes float32 or float64 parameters")
        self.result: scipy.optimize.OptimizeResult | None = None
        self.control: LBFGSControl | None = None
        self._outcome: LBFGSOutcome | None = None  # a following process's: what process 0 sent

    @property
    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.param_groups[0]["params"] if p.requires_grad]

    @property
    def converged(self) -> bool:
        """Whether the last step met a tolerance, or stopped abnormally at the objective's rounding
        level (finite, largest gradient entry within ROUNDING_SLACK × tolerance_grad); not when the
        budget ran out, the objective was not finite or the line search failed far from the optimum."""
        if self._outcome is not None:
            return self._outcome.converged
        result = self.result
        if result is None or not np.isfinite(result.fun):
            return False
        if result.status == STATUS_CONVERGED:
            return True
        near = np.abs(result.jac).max() <= ROUNDING_SLACK * self.param_groups[0]["tolerance_grad"]
        return bool(result.status == STATUS_ABNORMAL and near)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        """Minimize to convergence; returns the objective at the returned parameters (float64, host).

        Any evaluated point whose gradient meets tolerance_grad ends the run, line-search trials
        included: scipy tests the gradient only at points its line search accepts, and near the
        optimum a float32 objective's rounding (about 1e-8) can make it reject a stationary point
        and search on.
        """
        if self.control is not None and not self.control.leads:
            return self._follow(closure, self.control)
        group = self.param_groups[0]
        params = self.trainable
        sizes = [p.numel() for p in params]
        device, dtype = params[0].device, params[0].dtype
        evaluations = iterations = 0

        def load(x: np.ndarray) -> None:
            flat = torch.from_numpy(x).to(dtype).to(device)
            for param, chunk in zip(params, flat.split(sizes), strict=True):
                param.copy_(chunk.view_as(param))

        def evaluate(x: np.ndarray) -> tuple[float, np.ndarray]:
            nonlocal evaluations
            evaluations += 1
            load(x)
            if self.control is not None:
                self.control.propose()
            with torch.enable_grad():
                loss = closure()
            grads = [
                p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device) for p in params
            ]
            # One transfer back, so one sync per evaluation; a float64 loss keeps its precision.
            out = torch.cat([loss.detach().reshape(1).double(), *(g.double() for g in grads)]).cpu().numpy()
            value, gradient = float(out[0]), out[1:]
            if np.isfinite(value) and np.abs(gradient).max() <= group["tolerance_grad"]:
                raise _Stationary(x.copy(), value, gradient.copy())
            return value, gradient

        def count_iteration(intermediate_result: scipy.optimize.OptimizeResult) -> None:
            nonlocal iterations
            iterations += 1

        x0 = torch.cat([p.detach().reshape(-1) for p in params]).to("cpu", torch.float64).numpy()
        try:
            with _one_blas_thread():
                result = scipy.optimize.minimize(
                    evaluate,
                    x0,
                    jac=True,
                    method="L-BFGS-B",
                    callback=count_iteration,
                    options={
                        "maxiter": group["max_iter"],
                        "maxfun": group["max_eval"],
                        "gtol": group["tolerance_grad"],
                        "ftol": group["tolerance_change"],
                        "maxcor": group["history_size"],
                        "maxls": group["max_line_search"],
                    },
                )
        except _Stationary as stop:
            result = scipy.optimize.OptimizeResult(
                x=stop.x,
                fun=stop.value,
                jac=stop.gradient,
                nit=iterations + (evaluations > 1),  # a trial point completes the iteration under way
                nfev=evaluations,
                status=0,
                success=True,
                message="the largest gradient entry met tolerance_grad",
            )
        load(result.x)
        self.result = result
        if self.control is not None:
            fun, nit, nfev, status = float(result.fun), int(result.nit), int(result.nfev), int(result.status)
            self.control.finish(LBFGSOutcome(fun, nit, nfev, status, self.converged))
        return self._count(result)

    def _follow(self, closure: Callable[[], torch.Tensor], control: LBFGSControl) -> torch.Tensor:
        """A process other than 0 of a data-parallel fit: evaluate each point process 0 sends (the
        closure's collectives pair with process 0's) until it sends the outcome."""
        while (outcome := control.receive()) is None:
            with torch.enable_grad():
                closure()
        self._outcome = outcome
        x = torch.cat([p.detach().reshape(-1) for p in self.trainable]).to("cpu", torch.float64).numpy()
        self.result = scipy.optimize.OptimizeResult(
            x=x,
            fun=outcome.loss,
            nit=outcome.iterations,
            nfev=outcome.evaluations,
            status=outcome.status,
            success=outcome.status == 0,
            message="as L-BFGS-B ended on process 0",
        )
        return self._count(self.result)

    def _count(self, result: scipy.optimize.OptimizeResult) -> torch.Tensor:
        state = self.state[self.trainable[0]]
        state["n_iter"] = state.get("n_iter", 0) + int(result.nit)
        state["func_evals"] = state.get("func_evals", 0) + int(result.nfev)
        return torch.tensor(float(result.fun), dtype=torch.float64)


@functools.cache
def _numpy_and_scipy_blas() -> Any:
    """threadpoolctl's handle on the BLAS libraries loaded by numpy and scipy (not torch's)."""
    controller = ThreadpoolController()
    paths = [
        lib.filepath
        for lib in controller.lib_controllers
        if lib.user_api == "blas" and any(name in lib.filepath for name in ("numpy", "scipy"))
    ]
    return controller.select(filepath=paths)


def _one_blas_thread() -> Any:
    """numpy's and scipy's BLAS on one thread while L-BFGS-B runs (torch's own threads keep their
    number): waking OpenBLAS threads for vectors of a few thousand entries costs more than the
    operations, and on a small CPU those threads spin on the cores the objective's torch products need
    (benchmarks/regularization_path.py shows the difference)."""
    return _numpy_and_scipy_blas().limit(limits=1)


class _Stationary(Exception):
    """Raised from inside scipy's loop to stop at a point whose gradient met the tolerance."""

    def __init__(self, x: np.ndarray, value: float, gradient: np.ndarray) -> None:
        super().__init__()
        self.x, self.value, self.gradient = x, value, gradient
