"""Data-parallel full-batch L-BFGS on 1, 2, 4 or 8 GPUs over one activation store, side by side.

    python benchmarks/multi_gpu.py (--store PATH | --drawn) [--rows 4194304] [--dim 8192] [--gpus 1 2]
                                   [--holdout F] [--regularization 100 | --path] [--budget-gb G]
                                   [--launcher torchrun|lightning] [--device cuda|cpu]

Writes a float16 store of activation-like rows unless `--store` holds one already (block by block,
each block drawn on the GPU from its own seed, so a store larger than one GPU's memory is written
too), then trains the pytorch backend on it once per count P in `--gpus`:

    torchrun --standalone --nproc-per-node P -m probe_lab backend=pytorch data=store data.path=STORE
             device=cuda trainer.devices=P probe.regularization=R progress_bar=false hydra.run.dir=…

With `--drawn` there is no store: `data=drawn data.n=ROWS data.dim=DIM` (float16), each process
drawing the rows of its own shard on its own GPU (`probe_lab.data.drawn`), for splits larger than the
machine's disk or host memory. `--holdout F` sets `data.validation_split` and `data.test_split` to F
(13,107,200 rows with `--holdout 0.1` leave a training split of 10,485,760).
(`--launcher lightning` leaves torchrun out: Lightning's launcher starts the other processes;
`--path` fits the 6-value path [0.01, 0.1, 1, 10, 100, 1000] in the same pass; `--budget-gb` sets
`device.memory_budget_gb`, so that part of each process's shard streams from pinned host memory.)
NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1) in every process.

Floors, measured in the same run on GPU 0: its read bandwidth (a reduction over a resident block)
and the pinned host→device copy. For each P it prints the command's wall time, the fit, the L-BFGS
loop, evaluations and iterations, seconds per evaluation against one process's one-read floor (its
shard's bytes over the read bandwidth), collective seconds per evaluation, test AUROC, the cosine of
the probe to the first P's probe, and the loop's parallel efficiency T1 / (P·TP) against that P.
Strong scaling: one store, several P. Weak scaling: one store per P of P × rows-per-GPU rows.
`--device cpu` runs the same commands with gloo processes on the CPU (a check of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from probe_lab.data.synthetic import activation_like, activation_like_tensor
from probe_lab.store import ActivationStore

BLOCK_ROWS = 262144
GIB = 2**30
PATH = "[0.01,0.1,1,10,100,1000]"
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def write_store(path: Path, rows: int, dim: int, device: str) -> None:
    """`rows` activation-like float16 rows, BLOCK_ROWS at a time, block k drawn from seed k."""
    with ActivationStore.create(path, dim, dtype="float16") as writer:
        for block, start in enumerate(range(0, rows, BLOCK_ROWS)):
            count = min(BLOCK_ROWS, rows - start)
            if device == "cuda":
                x, y = activation_like_tensor(count, dim, seed=block, device="cuda")
                writer.append(x.cpu(), y)
            else:
                writer.append(*activation_like(count, dim, seed=block, dtype=np.float16))


def device_read_bandwidth(nbytes: int = 8 * GIB) -> float:
    """Bytes per second of one reduction over a resident float16 block on GPU 0 (the best of five)."""
    x = torch.ones(nbytes // 2, dtype=torch.float16, device="cuda")
    x.sum(dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        x.sum(dtype=torch.float32)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    del x
    torch.cuda.empty_cache()
    return nbytes / best


def pinned_copy_bandwidth(nbytes: int = GIB) -> float:
    """Bytes per second of a pinned host→device copy of `nbytes` to GPU 0 (the best of five)."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        target.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def data_flags(args: argparse.Namespace) -> list[str]:
    """The `data` settings of every run: the store, or rows drawn by each process."""
    if args.drawn:
        flags = ["data=drawn", f"data.n={args.rows}", f"data.dim={args.dim}", "data.dtype=float16"]
    else:
        flags = ["data=store", f"data.path={args.store.resolve()}"]
    if args.holdout is not None:
        flags += [f"data.validation_split={args.holdout}", f"data.test_split={args.holdout}"]
    return flags


def train(processes: int, args: argparse.Namespace, folder: Path) -> tuple[float, dict, np.ndarray]:
    """(wall seconds, metrics.json, exported weight) of one data-parallel run of `processes` processes."""
    run_dir = folder / f"p{processes}"
    flags = ["backend=pytorch", *data_flags(args), f"device={args.device}", "progress_bar=false"]
    flags += [f"trainer.devices={processes}", f"probe.regularization={PATH if args.path else args.regularization}"]
    flags += [f"hydra.run.dir={run_dir}"]
    if args.budget_gb is not None:
        flags.append(f"device.memory_budget_gb={args.budget_gb}")
    if args.launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        command += ["-m", "probe_lab", *flags]
    else:
        command = [sys.executable, "-m", "probe_lab", *flags]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | NO_MULTICAST, cwd=folder)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if done.stdout.count("probe_lab: pytorch backend") != 1:
        sys.exit(f"the run's summary was printed {done.stdout.count('probe_lab: pytorch backend')} times, not once")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return wall, metrics, load_file(str(run_dir / "probe.safetensors"))["weight"].ravel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", type=Path)
    source.add_argument("--drawn", action="store_true")
    parser.add_argument("--rows", type=int, default=4194304)
    parser.add_argument("--holdout", type=float)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--regularization", type=float, default=100.0)
    parser.add_argument("--path", action="store_true")
    parser.add_argument("--budget-gb", type=float)
    parser.add_argument("--launcher", choices=["torchrun", "lightning"], default="torchrun")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    if args.drawn:
        rows, dim = args.rows, args.dim
        print(f"drawn by each process: {rows} × {dim} float16, {rows * dim * 2 / 1e9:.1f} GB in all; ", end="")
    else:
        if not (args.store / "manifest.json").is_file():
            start = time.perf_counter()
            write_store(args.store, args.rows, args.dim, args.device)
            print(f"store: {args.rows} × {args.dim} float16 written in {time.perf_counter() - start:.1f} s")
        store = ActivationStore.open(args.store)
        rows, dim = store.rows, store.dim
        print(f"store {rows} × {dim} {store.manifest.dtype}, {store.manifest.nbytes / 1e9:.1f} GB; ", end="")
    on_gpu = args.device == "cuda"
    read = device_read_bandwidth() if on_gpu else float("nan")
    copy = pinned_copy_bandwidth() if on_gpu else float("nan")
    print(f"GPU 0 read {read / 1e9:.0f} GB/s, pinned host→device {copy / 1e9:.1f} GB/s")
    scratch = Path(tempfile.mkdtemp(prefix="probe_lab-multi-gpu-"))
    try:
        results = [(p, *train(p, args, scratch)) for p in args.gpus]
    finally:
        shutil.rmtree(scratch)
    columns = ["GPUs", "wall", "fit", "L-BFGS loop", "evaluations", "iterations", "s / evaluation", "× one-read floor"]
    columns += ["all-reduce s / evaluation", "test AUROC", "cosine to first", "efficiency"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    first_p, _, first_metrics, first_weight = results[0]
    first_loop = first_metrics["fit"]["optimize_seconds"]
    for processes, wall, metrics, weight in results:
        fit = metrics["fit"]
        evaluations = fit["evaluations"]
        per_evaluation = fit["optimize_seconds"] / evaluations
        shard_bytes = metrics["n_train"] * dim * 2 / processes
        floor = shard_bytes / read
        cosine = float(weight @ first_weight / (np.linalg.norm(weight) * np.linalg.norm(first_weight)))
        efficiency = first_p * first_loop / (processes * fit["optimize_seconds"])
        print(
            f"| {processes} | {wall:.1f} s | {metrics['fit_seconds']:.2f} s | {fit['optimize_seconds']:.3f} s | "
            f"{evaluations} | {fit['iterations']} | {per_evaluation * 1e3:.1f} ms | {per_evaluation / floor:.2f} | "
            f"{fit.get('collective_seconds', 0.0) / evaluations * 1e3:.2f} ms | {metrics['test']['auroc']:.4f} | "
            f"{cosine:.7f} | {efficiency:.0%} |"
        )
    placement = results[-1][2]["placement"]
    print(f"placement of the last run: {json.dumps(placement)}")


if __name__ == "__main__":
    main()
