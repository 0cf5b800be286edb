"""Per-feature statistics of GPU-resident activations: float32 single-read sums against float64 blocks.

    python benchmarks/moments.py [--n 157286] [--dim 8192] [--dtype float16]

The pytorch backend standardizes and preconditions with each feature's mean and std, computed on
the resident training split (`probe_lab.data.stats.tensor_moments`). This times, on activation-like
data (outlier dimensions, non-zero mean), the float32 single-read sums that `tensor_moments` uses on
a GPU, the float64 working-copy blocks it used before (`_exact_moments`, still used on the CPU and
for columns whose mean dwarfs their spread), and a device-to-device copy of the data; it prints
each as milliseconds and as copies' worth of time, and the sums' largest relative error in std
against float64.
"""

from __future__ import annotations

import argparse
import functools

import torch

from probe_lab.data.stats import _exact_moments, tensor_moments
from probe_lab.data.synthetic import activation_like_tensor


def timed(fn, repeats: int = 10) -> float:
    """Median seconds of fn() (which synchronizes, as the statistics' transfer to the host does)."""
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
    sums = timed(lambda: tensor_moments(x))
    exact = timed(lambda: [t.cpu() for t in _exact_moments(x)])
    exact_mean, exact_var = (t.cpu().numpy() for t in _exact_moments(x))
    mean, std = tensor_moments(x)
    std_error = float(abs(std / exact_var**0.5 - 1).max())
    mean_error = float((abs(mean - exact_mean) / exact_var**0.5).max())
    print(f"{args.n} x {args.dim} {args.dtype} ({gigabytes:.2f} GB) on {torch.cuda.get_device_name()}")
    print("| method | ms | copies |")
    print("| --- | ---: | ---: |")
    for name, seconds in (
        ("device-to-device copy", copy),
        ("float32 sums (tensor_moments)", sums),
        ("float64 blocks (_exact_moments)", exact),
    ):
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds / copy:.2f} |")
    print(f"float32 sums vs float64: max relative std error {std_error:.1e}, max mean error {mean_error:.1e} std")


if __name__ == "__main__":
    main()
