"""Full-batch L-BFGS with the training split in each home — resident on the device, pinned host memory,
streamed from an activation store — side by side, each evaluation against the floor of its home.

    python benchmarks/streamed_lbfgs.py [--store PATH] [--n 786432] [--dim 8192] [--budget-gb 2] [--adamw]
                                        [--threads 2 4 8]

Writes a float16 store of activation-like rows (drawn on the GPU when there is one) unless `--store`
already holds one, then fits the pytorch backend on its training split (60% of the rows):
- resident: the default budget (half the GPU's memory), the split read once onto the device;
- host (GPU only): `memory_budget_gb=--budget-gb`, the split held in pinned host memory and copied to
  the GPU at every evaluation;
- streamed: the same budget with no host memory to spare, the split read from the store at every
  evaluation (page cache warm from the write: no cache is dropped);
- with `--adamw`, minibatch AdamW streaming the same split to its early stop (the old fallback);
- with `--threads`, the streamed fit once per number of reader threads (`data.num_workers`).

Floors, measured in the same run: the device's read of the resident split (one reduction over it),
the pinned host→device copy of 1 GiB, and one sequential read of the store's files. For each home it
prints seconds per evaluation, their ratio to that home's floor (the bytes each evaluation moves —
the split less the part the budget keeps on the GPU — over the bandwidth), the fit's wall time,
L-BFGS iterations, and the cosine of its probe to the resident one. Last, on a GPU, how fast host
memory is page-locked: allocated pinned, and registered in place as the `host` home does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from probe_lab.backends.pytorch import TorchProbeTrainer
from probe_lab.data.splits import split_dataset
from probe_lab.data.synthetic import activation_like, activation_like_tensor
from probe_lab.settings import ProbeTrainingConfig, StreamingSettings
from probe_lab.store import ActivationStore

BLOCK_ROWS = 16384
GIB = 2**30


def write_store(path: Path, n: int, dim: int) -> None:
    """One draw of activation-like rows (on the GPU when there is one), written block by block."""
    if torch.cuda.is_available():
        x, y = activation_like_tensor(n, dim, seed=0, device="cuda")
    else:
        x, y = activation_like(n, dim, seed=0, dtype=np.float16)
    with ActivationStore.create(path, dim, dtype="float16") as writer:
        for first in range(0, n, BLOCK_ROWS):
            block = x[first : first + BLOCK_ROWS]
            writer.append(block.cpu() if isinstance(block, torch.Tensor) else block, y[first : first + BLOCK_ROWS])
    del x


def sequential_read_bandwidth(path: Path) -> float:
    """Bytes per second of one read of every file of the store, 16 MiB at a time."""
    buffer = bytearray(16 * 2**20)
    view = memoryview(buffer)
    total, start = 0, time.perf_counter()
    for file in sorted(path.iterdir()):
        with open(file, "rb", buffering=0) as handle:
            while got := handle.readinto(view):
                total += got
    return total / (time.perf_counter() - start)


def pinned_copy_bandwidth(device: torch.device) -> float:
    host = torch.empty(GIB, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(GIB, dtype=torch.uint8, device=device)
    target.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(3):
        target.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    return 3 * GIB / (time.perf_counter() - start)


def pinning_bandwidths(nbytes: int = 4 * GIB) -> tuple[float, float]:
    """Bytes per second of page-locking host memory: allocated pinned (`cudaHostAlloc`, through
    PyTorch's caching host allocator, 512 MiB at a time: larger than the blocks the fits before left in
    its cache) and registered in place after being written (`probe_lab.data.page_locked`)."""
    from probe_lab.data.page_locked import page_locked

    block = 512 * 2**20
    start = time.perf_counter()
    allocated = [torch.empty(block, dtype=torch.uint8, pin_memory=True) for _ in range(nbytes // block)]
    allocating = time.perf_counter() - start
    del allocated
    written = [torch.zeros(block, dtype=torch.uint8) for _ in range(nbytes // block)]
    start = time.perf_counter()
    registered = [page_locked(part) for part in written]
    registering = time.perf_counter() - start
    del registered, written
    return nbytes / allocating, nbytes / registering


def device_read_bandwidth(x: torch.Tensor) -> float:
    """Bytes per second of one pass over a resident tensor (a float32-accumulated sum of its rows)."""
    x.sum(0, dtype=torch.float32)
    torch.cuda.synchronize(x.device) if x.is_cuda else None
    start = time.perf_counter()
    for _ in range(3):
        x.sum(0, dtype=torch.float32)
    torch.cuda.synchronize(x.device) if x.is_cuda else None
    return 3 * x.numel() * x.element_size() / (time.perf_counter() - start)


def fit(splits, **config: object) -> TorchProbeTrainer:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = TorchProbeTrainer(splits.train.dim, ProbeTrainingConfig(device=device, **config))
    trainer.fit_datasets(splits.train, splits.val)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path)
    parser.add_argument("--n", type=int, default=786432)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--budget-gb", type=float, default=2.0)
    parser.add_argument("--adamw", action="store_true")
    parser.add_argument("--threads", type=int, nargs="+", default=[StreamingSettings().num_workers])
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="probe_lab-streamed-")
    store_path = args.store or Path(scratch.name) / "store"
    if not (store_path / "manifest.json").is_file():
        start = time.perf_counter()
        write_store(store_path, args.n, args.dim)
        print(f"wrote {store_path} in {time.perf_counter() - start:.1f} s")
    store = ActivationStore.open(store_path)
    splits = split_dataset(store.dataset(verify=False), 0.2, 0.2, seed=0)
    split_bytes = splits.train.nbytes()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    print(f"training split: {len(splits.train)} × {splits.train.dim} float16 = {split_bytes / 1e9:.2f} GB; {device}")

    floors = {"streamed": sequential_read_bandwidth(store_path)}
    resident_copy = splits.train.to_device(device)
    floors["resident"] = device_read_bandwidth(resident_copy)
    del resident_copy
    if gpu:
        floors["host"] = pinned_copy_bandwidth(device)
        torch.cuda.empty_cache()
    for home, bandwidth in floors.items():
        print(f"floor {home}: {bandwidth / 1e9:.1f} GB/s → {split_bytes / bandwidth * 1e3:.1f} ms per pass")

    runs: dict[str, TorchProbeTrainer] = {}
    runs["resident"] = fit(splits)
    if gpu:
        runs["host"] = fit(splits, memory_budget_gb=args.budget_gb)
    for threads in args.threads:
        streaming = StreamingSettings(num_workers=threads)
        runs[f"streamed, {threads} threads"] = fit(
            splits, memory_budget_gb=args.budget_gb, host_budget_gb=0, streaming=streaming
        )
    if args.adamw:
        runs["adamw"] = fit(splits, optimizer="adamw", memory_budget_gb=args.budget_gb, learning_rate=0.01)

    reference = runs["resident"].coef_
    print(
        "| home | optimizer | evaluations | s per evaluation | × floor | fit s | L-BFGS s | iterations | "
        "cosine to resident | load s | statistics s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, trainer in runs.items():
        details = trainer.fit_details
        cosine = float(trainer.coef_ @ reference / np.linalg.norm(trainer.coef_) / np.linalg.norm(reference))
        if details["optimizer"] == "lbfgs":
            per_eval = details["optimize_seconds"] / details["evaluations"]
            moved = split_bytes - trainer.placement.device_bytes  # what the budget keeps on the GPU is not copied
            ratio = per_eval / (moved / floors[trainer.placement.train_home.value])
            evals, iterations = str(details["evaluations"]), str(details["iterations"])
            timing = f"{per_eval * 1e3:.1f} ms | {ratio:.2f}"
            optimize = f"{details['optimize_seconds']:.2f}"
        else:
            evals, iterations, timing, optimize = f"{details['epochs']} epochs", "-", "- | -", "-"
        print(
            f"| {name} | {details['optimizer']} | {evals} | {timing} | "
            f"{trainer.fit_seconds:.2f} | {optimize} | {iterations} | {cosine:.6f} | "
            f"{details.get('load_seconds', 0):.2f} | {details.get('statistics_seconds', 0):.2f} |"
        )
    if gpu:  # last: the caching host allocator keeps what it pins, which would speed the fits above
        allocated, registered = pinning_bandwidths()
        print(f"page-locking: cudaHostAlloc {allocated / 1e9:.1f} GB/s, in place {registered / 1e9:.1f} GB/s")
    scratch.cleanup()


if __name__ == "__main__":
    main()
