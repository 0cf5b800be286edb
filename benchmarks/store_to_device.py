"""Store → batches on the device, against a plain sequential read of the same shard files.

    python benchmarks/store_to_device.py [--rows 524288] [--dim 4096] [--workers 2,4,8] [--device cuda]

Writes a float16 activation store of --rows × --dim under --tmp, then, side by side in one process:
a plain sequential read of its shard files (`readinto` a reused 32 MiB buffer), and one training
epoch as probe_lab streams it (`ProbeDataModule`: shuffled reads into a reused buffer, batches of
8192 gathered out of it by --workers reader threads, into pinned memory when CUDA is present), every
batch copied to --device. Page cache warm, and cold (the shards evicted with posix_fadvise(DONTNEED) before
each pass). GB/s counts the activation bytes delivered; the ratio is to the plain read in the same
cache state.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from probe_lab.fit.datamodule import ProbeDataModule
from probe_lab.settings import ProbeTrainingConfig, StreamingSettings
from probe_lab.settings.placement import SplitBytes, decide_placement
from probe_lab.store import ActivationStore

READ_BYTES = 32 << 20


def write_store(path: Path, rows: int, dim: int) -> ActivationStore:
    rng = np.random.default_rng(0)
    block = 65536
    with ActivationStore.create(path, dim, dtype="float16") as writer:
        for start in range(0, rows, block):
            count = min(block, rows - start)
            writer.append(rng.standard_normal((count, dim), dtype=np.float32), rng.integers(0, 2, count))
    return ActivationStore.open(path)


def evict(files: list[Path]) -> None:
    for file in files:
        with open(file, "rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def plain_read(files: list[Path]) -> float:
    """Seconds to read every shard file sequentially into one reused buffer."""
    buffer = bytearray(READ_BYTES)
    view = memoryview(buffer)
    start = time.perf_counter()
    for file in files:
        with open(file, "rb", buffering=0) as handle:
            while handle.readinto(view):
                pass
    return time.perf_counter() - start


def loader_epoch(store: ActivationStore, workers: int, device: str, pin: bool) -> float:
    """Seconds for one shuffled training epoch of the whole store, every batch on `device`."""
    dataset = store.dataset(verify=False)
    config = ProbeTrainingConfig(device=device, optimizer="adamw", streaming=StreamingSettings(num_workers=workers))
    placement = decide_placement(config, SplitBytes(dataset.nbytes(), dataset.nbytes()))
    module = ProbeDataModule(dataset, dataset, placement, batch_size=8192, streaming=config.streaming)
    loader = module.train_dataloader()
    pinned = pin and device.startswith("cuda")
    loader.dataset.pin_memory = pinned  # reader threads gather into pinned memory themselves
    loader.pin_memory = pinned and loader.dataset.threads <= 1
    start = time.perf_counter()
    rows = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        rows += len(y)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert rows == store.rows, (rows, store.rows)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=524288)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--workers", default="2,4,8")
    parser.add_argument("--pin", default="on", choices=["on", "off", "both"], help="pinned memory (CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tmp", default=tempfile.gettempdir())
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(dir=args.tmp, prefix="store_to_device-"))
    try:
        start = time.perf_counter()
        store = write_store(folder / "store", args.rows, args.dim)
        write_seconds = time.perf_counter() - start
        files = [folder / "store" / shard.file for shard in store.manifest.shards]
        gigabytes = store.manifest.nbytes / 1e9
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
        print(f"# {date.today()}  {platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}")
        print(f"# store: {args.rows} × {args.dim} float16 = {gigabytes:.2f} GB in {len(files)} shards")
        print(f"# written in {write_seconds:.1f} s ({gigabytes / write_seconds:.2f} GB/s)")
        print(f"{'pass':<46} {'cache':>5} {'s':>7} {'GB/s':>7} {'vs plain':>9}")
        for cache in ("warm", "cold"):
            if cache == "warm":
                plain_read(files)  # bring the shards into the page cache
            else:
                evict(files)
            plain = plain_read(files)
            label = "plain sequential read (readinto 32 MiB)"
            print(f"{label:<46} {cache:>5} {plain:7.2f} {gigabytes / plain:7.2f} {1:9.2f}")
            pins = {"on": [True], "off": [False], "both": [True, False]}[args.pin]
            for workers, pin in ((int(w), pin) for w in args.workers.split(",") for pin in pins):
                if cache == "cold":
                    evict(files)
                seconds = loader_epoch(store, workers, args.device, pin)
                label = f"probe_lab stream → {args.device}, {workers} threads{'' if pin else ', not pinned'}"
                print(f"{label:<46} {cache:>5} {seconds:7.2f} {gigabytes / seconds:7.2f} {plain / seconds:9.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
