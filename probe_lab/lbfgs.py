"""`DeviceLBFGS`: torch.optim.LBFGS with its two-loop recursion kept on the device.

torch.optim.LBFGS scales each history vector by a Python number (`q.add_(y, alpha=-al[i])` with
`al[i]` a tensor), which copies that coefficient to the host: with a history of 20, up to forty host
syncs per iteration, each one draining the GPU's queue of work. For a probe resident on a GPU those
syncs cost more than the evaluations of the objective themselves (benchmarks/gpu_scale.py). This
subclass is torch's algorithm step for step — the same initial step, memory update, strong-Wolfe line
search (torch's own `_strong_wolfe`) and stopping tests — except that the two-loop coefficients stay
0-dim device tensors. The host syncs left are the ones the algorithm branches on: the curvature
test, the line search's Wolfe conditions and the stopping tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.lbfgs import _strong_wolfe


class DeviceLBFGS(torch.optim.LBFGS):
    """torch.optim.LBFGS (same arguments, same state keys `func_evals` and `n_iter`), line search
    `strong_wolfe` only, with no host sync inside the two-loop recursion."""

    def __init__(self, params, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if kwargs.get("line_search_fn") != "strong_wolfe":
            raise ValueError("DeviceLBFGS needs line_search_fn='strong_wolfe'")
        super().__init__(params, **kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = float(group["lr"])
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        flat_grad = self._gather_flat_grad()
        if flat_grad.abs().max() <= tolerance_grad:
            return orig_loss

        old_dirs: list[torch.Tensor] = []  # y: gradient changes
        old_stps: list[torch.Tensor] = []  # s: steps
        ro: list[torch.Tensor] = []  # 1 / yᵀs, on the device
        h_diag: torch.Tensor | float = 1.0
        d = prev_flat_grad = None
        t: torch.Tensor | float = lr
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if prev_flat_grad is None:  # a step starts with steepest descent (no history kept across steps)
                d = flat_grad.neg()
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:  # curvature condition: a branch, so one sync
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / y.dot(y)
                d = self._direction(flat_grad, old_dirs, old_stps, ro, h_diag)

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss
            t = min(1.0, 1.0 / float(flat_grad.abs().sum())) * lr if n_iter == 1 else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break

            x_init = self._clone_param()

            def obj_func(x, step, direction):  # type: ignore[no-untyped-def]
                return self._directional_evaluate(closure, x, step, direction)

            loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
            )
            self._add_grad(t, d)
            opt_cond = flat_grad.abs().max() <= tolerance_grad
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change:  # lack of progress
                break
            if abs(loss - prev_loss) < tolerance_change:
                break
        return orig_loss

    @staticmethod
    def _direction(
        grad: torch.Tensor,
        old_dirs: list[torch.Tensor],
        old_stps: list[torch.Tensor],
        ro: list[torch.Tensor],
        h_diag: torch.Tensor | float,
    ) -> torch.Tensor:
        """-H·grad by the two-loop recursion, every coefficient a device tensor."""
        q = grad.neg()
        al: list[torch.Tensor] = [grad.new_zeros(())] * len(old_dirs)
        for i in range(len(old_dirs) - 1, -1, -1):
            al[i] = old_stps[i].dot(q) * ro[i]
            q.sub_(old_dirs[i] * al[i])
        r = q.mul(h_diag)
        for i in range(len(old_dirs)):
            be_i = old_dirs[i].dot(r) * ro[i]
            r.add_(old_stps[i] * (al[i] - be_i))
        return r
