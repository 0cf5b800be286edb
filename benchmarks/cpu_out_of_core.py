"""Full-batch L-BFGS on the CPU over a store larger than the memory budget: exact, flat in memory,
linear in time.

    python benchmarks/cpu_out_of_core.py [--n 262144] [--dim 256] [--scales 1 2 4]

For each scale s it writes a float32 store of s·n activation-like rows and runs
`python -m probe_lab data=store backend=pytorch device=cpu` on it twice: resident (the default
budget), and with `device.memory_budget_gb` set to a quarter of the n-row training split, so that
every evaluation streams the split (4×, 8×, 16× the budget) from the memory-mapped store. Each run's
peak RSS is its process's own (`ru_maxrss` of a fresh parent per run). Prints per scale: the
streamed run's peak RSS against the resident run's, the L-BFGS loop's time per evaluation per GB, the
whole command's wall time, evaluations, and the cosine between the two probes.
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
from safetensors.numpy import load_file

from probe_lab.data.synthetic import activation_like
from probe_lab.store import ActivationStore

BLOCK_ROWS = 65536
# A fresh parent per run, so that ru_maxrss is that run's process alone (KB on Linux).
MEASURED = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def write_store(path: Path, n: int, dim: int) -> None:
    with ActivationStore.create(path, dim, dtype="float32") as writer:
        for first in range(0, n, BLOCK_ROWS):
            rows = min(BLOCK_ROWS, n - first)
            x, y = activation_like(rows, dim, seed=first)
            writer.append(x, y)


def fit(store: Path, run_dir: Path, budget_gb: float | None) -> tuple[float, float, dict, np.ndarray]:
    """(peak RSS GB, wall seconds, metrics, probe weight) of one run."""
    command = [sys.executable, "-m", "probe_lab", "data=store", f"data.path={store}", "backend=pytorch"]
    command += ["device=cpu", "progress_bar=false", "data.verify=false", f"hydra.run.dir={run_dir}"]
    if budget_gb is not None:
        command.append(f"device.memory_budget_gb={budget_gb}")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURED, *command], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    weight = load_file(str(run_dir / "probe.safetensors"))["weight"].ravel()
    return int(done.stdout.split()[-1]) / 1e6, wall, metrics, weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=262144)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    train_gb = 0.6 * args.n * args.dim * 4 / 1e9  # data.validation_split and test_split: 0.2 each
    budget = train_gb / 4
    print(f"rows n={args.n}, dim {args.dim} float32; memory budget {budget:.3f} GB (a quarter of n's training split)")
    columns = ["rows", "split / budget", "peak RSS streamed", "peak RSS resident", "loop per eval per GB"]
    print("| " + " | ".join([*columns, "wall", "evals", "cosine"]) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        for scale in args.scales:
            rows = scale * args.n
            store = Path(scratch) / f"store{scale}"
            write_store(store, rows, args.dim)
            rss_s, wall, streamed, w_s = fit(store, Path(scratch) / f"s{scale}", budget)
            rss_r, _, resident, w_r = fit(store, Path(scratch) / f"r{scale}", None)
            assert streamed["placement"]["train"] == "streamed" and resident["placement"]["train"] == "resident"
            evaluations = streamed["fit"]["evaluations"]
            per_gb = streamed["fit"]["optimize_seconds"] / evaluations / streamed["placement"]["train_gb"]
            cosine = float(w_s @ w_r / (np.linalg.norm(w_s) * np.linalg.norm(w_r)))
            print(
                f"| {rows} | {streamed['placement']['train_gb'] / budget:.0f}× | {rss_s:.2f} GB | {rss_r:.2f} GB | "
                f"{per_gb * 1e3:.0f} ms | {wall:.1f} s | {evaluations} | {cosine:.7f} |"
            )
            for path in (store,):
                for file in path.iterdir():
                    file.unlink()


if __name__ == "__main__":
    main()
