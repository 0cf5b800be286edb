"""Per-feature statistics of GPU-resident activations: the float32 blocks probe_lab uses, against
float64 blocks and a device-to-device copy.

    python benchmarks/moments.py [--n 157286] [--dim 8192] [--dtype float16]

The pytorch backend centers and scales features with each one's mean and std, computed on the
resident training split (`probe_lab.data.stats.tensor_moments`): from every row with
standardize=true, from 16384 sampled rows for raw features (where they only precondition). On
activation-like data (outlier dimensions, non-zero mean) this times both, the same Welford blocks
up-cast to float64 instead of float32, and a copy of the data; it prints milliseconds, copies' worth
of time, and the float32 blocks' largest relative std error against float64.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import torch

from probe_lab.backends.lightning import PRECONDITIONER_ROWS
from probe_lab.data.stats import tensor_moments
from probe_lab.data.synthetic import activation_like_tensor


def timed(fn, repeats: int = 10) -> float:
    """Median seconds of fn() on the current CUDA stream."""
    fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return sorted(times)[len(times) // 2]


def float64_moments(x: torch.Tensor, block_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """`tensor_moments`'s Welford blocks and Chan combination, with float64 working copies."""
    count = 0
    mean = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    m2 = torch.zeros_like(mean)
    for block in x.split(block_rows):
        k = len(block)
        block_var, block_mean = torch.var_mean(block.double(), dim=0, correction=0)
        delta = block_mean - mean
        total = count + k
        mean += delta * (k / total)
        m2 += block_var * k + delta**2 * (count * k / total)
        count = total
    return mean.cpu().numpy(), (m2 / count).sqrt().cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=157286)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args()
    x, _ = activation_like_tensor(args.n, args.dim, seed=0, device="cuda", dtype=getattr(torch, args.dtype))
    gigabytes = x.numel() * x.element_size() / 1e9
    scratch = torch.empty_like(x)
    copy = timed(functools.partial(scratch.copy_, x))
    del scratch
    rows = [
        ("device-to-device copy", copy),
        ("float32 blocks, every row (standardize=true)", timed(lambda: tensor_moments(x))),
        (
            f"float32 blocks, {PRECONDITIONER_ROWS} sampled rows (raw features)",
            timed(lambda: tensor_moments(x, sample_rows=PRECONDITIONER_ROWS)),
        ),
        ("float64 blocks, every row", timed(lambda: float64_moments(x))),
    ]
    _, exact_std = float64_moments(x)
    _, std = tensor_moments(x)
    print(f"{args.n} x {args.dim} {args.dtype} ({gigabytes:.2f} GB) on {torch.cuda.get_device_name()}")
    print("| statistics | ms | copies |")
    print("| --- | ---: | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds / copy:.2f} |")
    print(f"float32 blocks vs float64: largest relative std error {float(np.abs(std / exact_std - 1).max()):.1e}")


if __name__ == "__main__":
    main()
