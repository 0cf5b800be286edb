"""Per-feature statistics of GPU-resident activations: the float32 blocks probe_lab uses, against
float64 blocks and a device-to-device copy.

    python benchmarks/moments.py [--n 157286] [--dim 8192] [--dtype float16]

The pytorch backend centers and scales features with each one's mean and std, computed on the
resident training split (`probe_lab.data.stats.device_moments`): from every row with
standardize=true, from 16384 sampled rows for raw features (where they only precondition). On
activation-like data (outlier dimensions, non-zero mean) this times both, the same Welford blocks
up-cast to float64 instead (`work_dtype`), and a copy of the data; it prints milliseconds, copies' worth
of time, and the float32 blocks' largest relative std error against float64.
"""

from __future__ import annotations

import argparse
import functools

import torch
from half_products import timed

from probe_lab.data.stats import device_moments
from probe_lab.data.synthetic import activation_like_tensor
from probe_lab.fit.objective import PRECONDITIONER_ROWS


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
        ("float32 blocks, every row (standardize=true)", timed(lambda: device_moments(x))),
        (
            f"float32 blocks, {PRECONDITIONER_ROWS} sampled rows (raw features)",
            timed(lambda: device_moments(x, sample_rows=PRECONDITIONER_ROWS)),
        ),
        ("float64 blocks, every row", timed(lambda: device_moments(x, work_dtype=torch.float64))),
    ]
    _, exact_std = device_moments(x, work_dtype=torch.float64)
    _, std = device_moments(x)
    print(f"{args.n} x {args.dim} {args.dtype} ({gigabytes:.2f} GB) on {torch.cuda.get_device_name()}")
    print("| statistics | ms | copies |")
    print("| --- | ---: | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds / copy:.2f} |")
    print(f"float32 blocks vs float64: largest relative std error {float((std / exact_std - 1).abs().max()):.1e}")


if __name__ == "__main__":
    main()
