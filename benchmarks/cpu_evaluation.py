"""One L-BFGS evaluation on the CPU: the blocked one-read pass against the two products, side by side.

    python benchmarks/cpu_evaluation.py [--n 200000] [--dim 1024] [--columns 1 6] [--dtype float32 bfloat16]
                                        [--repeats 5]

For each width, column count (1: one probe; K: a regularization path) and storage dtype, times the
objective's loss and gradient (`ProbeObjective.loss_sum` and its backward, as an evaluation runs them)
through `blocked_logistic` (each cache-sized block read once for the logits and the gradient) and
through `two_product_loss_sum` (the logits product, then the gradient product), best of `--repeats`.
The floor is the split's bytes over the memory bandwidth a plain pass over the same tensor reaches in
the same run (`x.sum()` in float32 blocks, which reads it once).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

import torch

from probe_lab.fit.linear_probe import LinearProbe
from probe_lab.fit.objective import ProbeObjective


def best_seconds(evaluate, repeats: int) -> float:
    evaluate()  # warm-up: allocations, thread pool
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, nargs="+", default=[1024])
    parser.add_argument("--columns", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    print(f"# {date.today()}  {machine}, {os.cpu_count()} cores, {threads} threads, torch {torch.__version__}")
    header = ("rows × dims", "dtype", "K", "floor ms", "two products ms", "blocked ms", "speed-up", "blocked / floor")
    print(f"{header[0]:<16} {header[1]:<9} " + " ".join(f"{h:>16}" for h in header[2:]))
    generator = torch.Generator().manual_seed(0)
    for dim in args.dim:
        for dtype_name in args.dtype:
            x = (torch.randn(args.n, dim, generator=generator) * 2 + 1).to(getattr(torch, dtype_name))
            y = (torch.rand(args.n, generator=generator) > 0.5).float()
            block = max(1, (4 << 20) // (4 * dim))
            floor = best_seconds(
                lambda x=x, block=block: [x[s : s + block].float().sum() for s in range(0, len(x), block)], args.repeats
            )
            for columns in args.columns:
                probe = LinearProbe(dim, outputs=columns)
                objective = ProbeObjective([10.0**k for k in range(columns)], args.n, dim)
                with torch.no_grad():
                    probe.linear.weight.normal_(0, 0.01, generator=generator)
                params = list(probe.parameters())

                def blocked(probe=probe, objective=objective, x=x, y=y, params=params) -> None:
                    torch.autograd.grad(objective.loss_sum(probe, x, y), params)

                def two(probe=probe, objective=objective, x=x, y=y, params=params) -> None:
                    torch.autograd.grad(objective.two_product_loss_sum(probe, x, y), params)

                two_s, blocked_s = best_seconds(two, args.repeats), best_seconds(blocked, args.repeats)
                shape = f"{args.n} × {dim}"
                cells = (columns, f"{floor * 1e3:.1f}", f"{two_s * 1e3:.1f}", f"{blocked_s * 1e3:.1f}")
                ratios = (f"{two_s / blocked_s:.2f}x", f"{blocked_s / floor:.2f}x")
                print(f"{shape:<16} {dtype_name:<9} " + " ".join(f"{cell:>16}" for cell in (*cells, *ratios)))


if __name__ == "__main__":
    main()
