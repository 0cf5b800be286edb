"""How fast the GPU multiplies a half-precision activation matrix by float32 vectors, per formulation.

    python benchmarks/half_products.py [--n 157286] [--dim 8192] [--columns 1]

An L-BFGS evaluation of the probe is two products with the resident (N, D) activations: logits
X·W (W: D × K) and the gradient Gᵀ·X (G: N × K). Both are bound by reading X. This times each way
of computing them with float32 results (see probe_lab.linear_probe) against a device-to-device
copy, and prints the effective read bandwidth of X (GB/s) and the fraction of the copy's.
"""

from __future__ import annotations

import argparse

import torch

from probe_lab.fit.linear_probe import blocked_gradient_product


def timed(fn, repeats: int = 20) -> float:
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


def split_k(rows: torch.Tensor, x: torch.Tensor, splits: int) -> torch.Tensor:
    """rows (K, N) @ x (N, D) as `splits` batched products over slices of N, summed."""
    n = x.shape[0] - x.shape[0] % splits
    part = n // splits
    batched = torch.bmm(
        rows[:, :n].reshape(rows.shape[0], splits, part).transpose(0, 1),
        x[:n].view(splits, part, x.shape[1]),
        out_dtype=torch.float32,
    ).sum(0)
    if n < x.shape[0]:
        batched += torch.mm(rows[:, n:], x[n:], out_dtype=torch.float32)
    return batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=157286)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--columns", type=int, default=1, help="K: probes trained side by side")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    x = torch.randn(args.n, args.dim, device="cuda").to(dtype)
    nbytes = x.numel() * x.element_size()
    scratch = torch.empty_like(x)
    copy = timed(lambda: scratch.copy_(x))
    scratch = None
    copy_bandwidth = 2 * nbytes / copy
    k2 = 2 * args.columns
    w2 = torch.randn(args.dim, k2, device="cuda").to(dtype)
    g2 = torch.randn(k2, args.n, device="cuda").to(dtype)
    w_half, g_half = w2[:, 0].contiguous(), g2[0].contiguous()
    w16 = torch.cat([w2, w2.new_zeros(args.dim, -k2 % 16)], dim=1)  # zero columns up to 16
    g16 = torch.cat([g2, g2.new_zeros(-k2 % 16, args.n)])
    cases = {
        "logits: mm(X, W hi|lo), float32 out": lambda: torch.mm(x, w2, out_dtype=torch.float32),
        "logits: mm(X, W hi|lo + zero columns to 16), float32 out": lambda: torch.mm(x, w16, out_dtype=torch.float32),
        "logits: mm(Wᵀ hi|lo + zero rows to 16, Xᵀ)ᵀ, float32 out": lambda: (
            torch.mm(w16.T, x.T, out_dtype=torch.float32).T
        ),
        "logits: mv(X, w) half out (cuBLAS gemv reference)": lambda: torch.mv(x, w_half),
        "gradient: mm(G hi|lo, X), float32 out": lambda: torch.mm(g2, x, out_dtype=torch.float32),
        "gradient: mm(G hi|lo + zero rows to 16, X), float32 out": lambda: torch.mm(g16, x, out_dtype=torch.float32),
        "gradient: blocked_gradient_product(G hi|lo, X), float32 out (probe_lab)": lambda: blocked_gradient_product(
            g2, x
        ),
        "gradient: mm(Xᵀ, G hi|lo), float32 out": lambda: torch.mm(x.T, g2.T, out_dtype=torch.float32),
        "gradient: mm(Xᵀ, G hi|lo + zero rows to 16), float32 out": lambda: torch.mm(
            x.T, g16.T, out_dtype=torch.float32
        ),
        "gradient: mv(Xᵀ, g) half out (cuBLAS gemv reference)": lambda: torch.mv(x.T, g_half),
    }
    for splits in (8, 16, 32, 64, 128):
        cases[f"gradient: split-K bmm over {splits} slices, float32 out"] = lambda s=splits: split_k(g2, x, s)
    print(
        f"# {torch.cuda.get_device_name()}; X {args.n} x {args.dim} {args.dtype} ({nbytes / 1e9:.2f} GB), "
        f"K={args.columns}; copy {copy * 1e3:.3f} ms = {copy_bandwidth / 1e9:.0f} GB/s read + write\n"
    )
    print("| product | ms | X read GB/s | of copy bandwidth |\n| --- | ---: | ---: | ---: |")
    for name, fn in cases.items():
        seconds = timed(fn)
        read = nbytes / seconds
        print(f"| {name} | {seconds * 1e3:.3f} | {read / 1e9:.0f} | {read / copy_bandwidth:.2f} |")


if __name__ == "__main__":
    main()
