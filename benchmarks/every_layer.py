"""`data.layer=all` with every layer read in one pass against each layer read on its own, side by side.

    python benchmarks/every_layer.py [--rows 200000] [--layers 8] [--dim 512] [--backend sklearn]

Writes a float16 store of N×L×D activation-like rows (each layer its own draw), then runs

    python -m probe_lab data=store data.path=STORE data.layer=all backend=B

twice: as is (the store read once, in one pass, into host memory every layer's fit reads from) and
with `device.host_budget_gb=0` (each layer's run scans the store for its checksums and NaN/Inf rows
and reads its own layer). Prints each command's wall time, the read and load time its layers'
metrics.json record, with the one pass's own time from layers.json (each layer's scan and reading of
rows, or the one pass and each layer's copy of its rows from the held memory), and
whether both found the same probes (test AUROC per layer). Before each command the store's files are
dropped from the page cache (`posix_fadvise(DONTNEED)`, which needs no privileges), so each reads
from the disk as a store larger than the page cache would; `--warm` leaves the cache as it is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from store_io import evict  # this script's folder is on sys.path when it runs

from probe_lab.data.synthetic import activation_like
from probe_lab.store import ActivationStore


def write_store(path: Path, rows: int, layers: int, dim: int) -> None:
    block = 16384
    with ActivationStore.create(path, dim, layers, "float16") as writer:
        for start in range(0, rows, block):
            count = min(block, rows - start)
            draws = [activation_like(count, dim, seed=start * layers + k, dtype=np.float16) for k in range(layers)]
            writer.append(np.stack([x for x, _ in draws], axis=1), draws[layers // 2][1])


def run(store: Path, backend: str, folder: Path, extra: list[str]) -> tuple[float, dict]:
    """(wall seconds, layers.json) of one layer=all run."""
    command = [sys.executable, "-m", "probe_lab", "data=store", f"data.path={store}", "data.layer=all"]
    command += [f"backend={backend}", "progress_bar=false", f"hydra.run.dir={folder}", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return wall, json.loads((folder / "layers.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--backend", default="sklearn")
    parser.add_argument("--warm", action="store_true", help="leave the store in the page cache")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="probe_lab-every-layer-"))
    try:
        store = scratch / "store"
        write_store(store, args.rows, args.layers, args.dim)
        nbytes = ActivationStore.open(store).manifest.nbytes
        cache = "warm" if args.warm else "cold (dropped before each command)"
        shape = f"{args.rows} × {args.layers} × {args.dim} float16"
        print(f"store: {shape}, {nbytes / 1e9:.2f} GB; {args.backend}; page cache {cache}")
        print("| reading | wall s | read + load s (in all) |")
        print("| --- | ---: | ---: |")
        results = {}
        for name, extra in (("one pass", []), ("layer by layer", ["device.host_budget_gb=0"])):
            folder = scratch / name.replace(" ", "_")
            if not args.warm:
                evict(list(store.iterdir()))
            wall, layers = run(store, args.backend, folder, extra)
            seconds = layers["read_seconds"]  # the one pass, before the layers' runs (≈0 layer by layer)
            for row in layers["layers"]:
                timings = json.loads((Path(row["probe"]).parent / "metrics.json").read_text())["timings"]
                seconds += timings["read_seconds"] + timings["load_seconds"]
            results[name] = [row["test_auroc"] for row in layers["layers"]]
            print(f"| {name} ({layers['read']}) | {wall:.1f} | {seconds:.2f} |")
        same = results["one pass"] == results["layer by layer"]
        print(f"same test AUROC on every layer: {same}")
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
