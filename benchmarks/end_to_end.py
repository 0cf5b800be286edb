"""A run from an activation store on local disk, against one sequential read of the store plus the fit.

    python benchmarks/end_to_end.py [--store /tmp/probe_lab_e2e] [--n 262144] [--dim 8192] [--repeats 2]

Writes a float16 store of activation-like data (drawn on the GPU when there is one) unless `--store`
already holds one, then, `--repeats` times:
1. reads every file of the store once, front to back, 16 MiB at a time in one thread (the page
   cache is warm from the write or the previous run; no cache is dropped);
2. runs `python -m probe_lab data=store data.path=STORE backend=auto model.size_b=70` in a subprocess
   and reads the run's own breakdown (read, load, fit, evaluate, write) from its metrics.json.

Prints the breakdown, the run's total (the stages summed: what the run itself spends after start-up),
the command's wall time (interpreter start and imports included), and the target ratio
total / (sequential read + fit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from probe_lab.data.synthetic import activation_like, activation_like_tensor
from probe_lab.store import ActivationStore

BLOCK_ROWS = 16384


def write_store(path: Path, n: int, dim: int) -> float:
    """Write the store block by block from one draw of the data; returns seconds."""
    if torch.cuda.is_available():
        x, y = activation_like_tensor(n, dim, seed=0, device="cuda")
    else:
        x, y = activation_like(n, dim, seed=0, dtype=np.float16)
    start = time.perf_counter()
    with ActivationStore.create(path, dim, dtype="float16") as writer:
        for first in range(0, n, BLOCK_ROWS):
            block = x[first : first + BLOCK_ROWS]
            writer.append(
                block.cpu().numpy() if isinstance(block, torch.Tensor) else block, y[first : first + BLOCK_ROWS]
            )
    return time.perf_counter() - start


def sequential_read(path: Path) -> tuple[float, int]:
    """(seconds, bytes) to read every file of the store once, in one thread."""
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    total = 0
    start = time.perf_counter()
    for file in sorted(path.iterdir()):
        with open(file, "rb", buffering=0) as handle:
            while got := handle.readinto(view):
                total += got
    return time.perf_counter() - start, total


def run(store: Path, out: Path) -> tuple[float, dict]:
    command = [
        sys.executable, "-m", "probe_lab", "data=store", f"data.path={store}", "backend=auto", "model.size_b=70",
        f"hydra.run.dir={out}",
    ]  # fmt: skip
    start = time.perf_counter()
    # From the output folder: the installed probe_lab, not a source checkout in the working directory.
    out.mkdir(parents=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=out)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"probe_lab failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(done.stdout.strip())
    return wall, json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "probe_lab_e2e")
    parser.add_argument("--n", type=int, default=262144)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not (args.store / "manifest.json").is_file():
        seconds = write_store(args.store, args.n, args.dim)
        print(f"wrote {args.store} ({args.n} x {args.dim} float16) in {seconds:.1f} s")
    header = (
        "| run | sequential read s | GB/s | "
        + " | ".join(("read", "load", "fit", "evaluate", "write"))
        + " | run total s | command wall s | total / (read + fit) |"
    )
    rows = []
    for repeat in range(args.repeats):
        read_seconds, nbytes = sequential_read(args.store)
        with tempfile.TemporaryDirectory() as out:
            wall, metrics = run(args.store, Path(out) / "run")
        timings = metrics["timings"]
        total = sum(timings.values())
        ratio = total / (read_seconds + timings["fit_seconds"])
        stages = " | ".join(f"{timings.get(f'{name}_seconds', 0.0):.2f}" for name in
                            ("read", "load", "fit", "evaluate", "write"))  # fmt: skip
        rows.append(
            f"| {repeat + 1} | {read_seconds:.2f} | {nbytes / read_seconds / 1e9:.1f} | {stages} | {total:.2f} | "
            f"{wall:.2f} | {ratio:.2f} |"
        )
        print(f"fit details: {json.dumps(metrics['fit'])}")
    print(f"\nstore {args.store}: {nbytes / 1e9:.2f} GB\n")
    print(header)
    print("| --- " * (header.count("|") - 1) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
