"""Data-parallel full-batch L-BFGS on the CPU: 1, 2 and 3 gloo processes through the command line,
side by side on the same data, each probe against the one-process probe.

    python benchmarks/data_parallel_cpu.py [--n 200001] [--dim 256] [--processes 1 2 3] [--streamed]

Each run is `python -m probe_lab backend=pytorch device=cpu data.n=N data.dim=D trainer.devices=P`
(Lightning's launcher starts the other processes); `--streamed` adds a memory budget so small that
every process streams its shard from memory at each evaluation. N is odd so that the shards are
uneven. Prints, per process count: the command's wall time, the fit (the Trainer's whole fit,
process start-up of the others included), the L-BFGS loop, evaluations and iterations, the time in
collectives, and the probe's cosine and test AUROC difference to the one-process run.
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


def run(n: int, dim: int, processes: int, streamed: bool, folder: Path) -> tuple[float, dict, np.ndarray]:
    run_dir = folder / f"p{processes}"
    command = [sys.executable, "-m", "probe_lab", "backend=pytorch", "device=cpu", "progress_bar=false"]
    command += [f"data.n={n}", f"data.dim={dim}", f"trainer.devices={processes}", f"hydra.run.dir={run_dir}"]
    if streamed:
        command.append("device.memory_budget_gb=0.000001")
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return wall, metrics, load_file(str(run_dir / "probe.safetensors"))["weight"].ravel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200001)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--streamed", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        results = [(p, *run(args.n, args.dim, p, args.streamed, Path(scratch))) for p in args.processes]
    _, _, base_metrics, base = results[0]
    home = base_metrics["placement"]["train"]
    print(f"n={args.n} dim={args.dim} float32, training split {base_metrics['n_train']} rows, {home}")
    columns = ["processes", "wall", "fit", "L-BFGS loop", "evaluations", "iterations", "collectives"]
    print("| " + " | ".join([*columns, "cosine to 1", "Δ test AUROC"]) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for processes, wall, metrics, weight in results:
        fit = metrics["fit"]
        cosine = float(weight @ base / (np.linalg.norm(weight) * np.linalg.norm(base)))
        delta = metrics["test"]["auroc"] - base_metrics["test"]["auroc"]
        print(
            f"| {processes} | {wall:.1f} s | {metrics['fit_seconds']:.2f} s | {fit['optimize_seconds']:.3f} s | "
            f"{fit['evaluations']} | {fit['iterations']} | {fit.get('collective_seconds', 0.0):.3f} s | "
            f"{cosine:.7f} | {delta:+.1e} |"
        )


if __name__ == "__main__":
    main()
