"""Activation store I/O on the CPU, side by side in one run: the store against plain reads, against
per-sample tensor files, and against itself at N, 2N and 4N rows.

    python benchmarks/store_io.py [--rows 730000] [--dim 4096] [--split 0.6] [--files 100000]
        [--file-dim 1024] [--file-store-dtype float32] [--scale-rows 65536] [--repeats 0]
        [--tmp /tmp] [--keep] [--targets 1234]

Everything it writes lives in a fresh folder under --tmp, removed at the end unless --keep. On a
2-core machine the defaults take 7 to 13 minutes and at most about 7 GB of disk.

1. Training data path against a plain read. A float16 store of --rows × --dim (6 GB by default) is
   written with `ActivationStore.create(...).append(...)` (write GB/s, then a further fsync). Its
   shard files are read sequentially with `readinto` (1 MiB and 32 MiB buffers; the faster is the
   baseline), and
   delivered as training batches by `ProbeDataModule.train_dataloader()` with the project's defaults
   (StreamedBatches, shuffle, batch_size 8192, num_workers 2, read_mb 32, shuffle_reads 4,
   prefetch 2): batches counted as they arrive in the main process (on this CPU machine, "on the
   device"). Page cache warm (the first epoch, or the best with --repeats more) and cold (shards
   evicted with posix_fadvise(DONTNEED) first; their residency is checked with mincore). Over the
   whole store, and over a sorted random --split of its rows (GB/s of delivered training rows).
2. Peak RSS of `python -m probe_lab data=store ... probe.optimizer=adamw probe.max_iterations=2` on
   that store: VmRSS of the main process and of the whole process tree (main + DataLoader workers),
   sampled every 50 ms; the tree sum counts shared pages once per process, so the summed PSS is
   given too.
3. One epoch over --files per-sample .pt files (D=--file-dim float32, torch.save), read as the seed
   did (DataLoader(batch_size=4096, shuffle=True, num_workers=0) over a Dataset whose __getitem__
   does torch.load(weights_only=True) of one file), against one epoch over the same samples converted
   with `probe_lab.convert.convert` (--file-store-dtype, float32 by default: the same bytes) and
   streamed as in 1. Creation and conversion are timed as well.
4. Stores of N, 2N and 4N rows (N = --scale-rows, D = --dim float16): write, scan, one streamed
   epoch and one full `python -m probe_lab ... probe.optimizer=adamw probe.max_iterations=1` run each
   (seconds, seconds per million rows, peak RSS).

Every loader and training run goes through probe_lab's code unmodified; a run that fails is reported as
failed, with its error, and its target as not met.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime as dt
import gc
import json
import mmap
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from probe_lab.convert import convert
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.tensor_files import natural_sorted
from probe_lab.fit.datamodule import ProbeDataModule
from probe_lab.settings import ProbeSettings, ProbeTrainingConfig, StreamingSettings
from probe_lab.settings.placement import SplitBytes, decide_placement
from probe_lab.store import ActivationStore

GB = 1e9
MB = 1 << 20
SEED_BATCH = 4096
POOL_BLOCKS = 4
POOL_ROWS = 8192


# -- data -----------------------------------------------------------------------------------------
def labelled_block(gen: torch.Generator, rows: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32 (rows, dim), y int64 (rows,)): Gaussian rows with the label's sign planted in 8 dims."""
    y = torch.randint(0, 2, (rows,), generator=gen)
    x = torch.randn(rows, dim, generator=gen)
    x[:, :8] += (2.0 * y[:, None] - 1.0) * 0.5
    return x, y


def block_pool(dim: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few float16 blocks that the store writers cycle through, so generating data stays off the clock."""
    gen = torch.Generator().manual_seed(seed)
    return [(x.half(), y) for x, y in (labelled_block(gen, POOL_ROWS, dim) for _ in range(POOL_BLOCKS))]


def write_store(path: Path, rows: int, dim: int, pool: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Write a float16 store by appends of POOL_ROWS rows; time the appends + close, then fsync apart."""
    writer = ActivationStore.create(path, dim, dtype="float16")
    seconds = 0.0
    for k, start in enumerate(range(0, rows, POOL_ROWS)):
        x, y = pool[k % len(pool)]
        take = min(POOL_ROWS, rows - start)
        begin = time.perf_counter()
        writer.append(x[:take], y[:take])
        seconds += time.perf_counter() - begin
    begin = time.perf_counter()
    manifest = writer.close()
    seconds += time.perf_counter() - begin
    begin = time.perf_counter()
    for shard in shard_paths(path):
        fd = os.open(shard, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return {"bytes": manifest.nbytes, "write_s": seconds, "fsync_s": time.perf_counter() - begin}


def shard_paths(store: Path) -> list[Path]:
    return sorted(store.glob("shard-*.safetensors"))


# -- page cache -----------------------------------------------------------------------------------
def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (clean pages need no root: fsync first, then DONTNEED)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def resident_fraction(paths: list[Path]) -> float:
    """Fraction of the files' pages in the page cache (mincore over a mapping that touches nothing)."""
    total = resident = 0
    for path in paths:
        size = path.stat().st_size
        pages = -(-size // mmap.PAGESIZE)
        fd = os.open(path, os.O_RDONLY)
        try:
            address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                return float("nan")
            vector = (ctypes.c_ubyte * pages)()
            _libc.mincore(address, size, vector)
            _libc.munmap(address, size)
        finally:
            os.close(fd)
        resident += int((np.frombuffer(vector, dtype=np.uint8) & 1).sum())
        total += pages
    return resident / max(total, 1)


# -- readers --------------------------------------------------------------------------------------
def plain_read(paths: list[Path], buffer_bytes: int) -> tuple[int, float]:
    """Each file read start to end with readinto into one reused buffer: (bytes, seconds)."""
    view = memoryview(bytearray(buffer_bytes))
    total = 0
    begin = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as file:
            while count := file.readinto(view):
                total += count
    return total, time.perf_counter() - begin


def stream_loader(dataset: ActivationDataset, num_workers: int | None = None) -> DataLoader:
    """The training DataLoader exactly as a run builds it, with the project's default settings."""
    streaming, probe = StreamingSettings(), ProbeSettings()
    if num_workers is not None:
        streaming = dataclasses.replace(streaming, num_workers=num_workers)
    placement = decide_placement(ProbeTrainingConfig(device="cpu", optimizer="adamw"), SplitBytes(1, 1))
    module = ProbeDataModule(dataset, dataset, placement, batch_size=probe.batch_size, seed=42, streaming=streaming)
    return module.train_dataloader()


def epoch(loader: DataLoader) -> tuple[int, int, float]:
    """One pass: (rows, bytes of x delivered, seconds)."""
    rows = nbytes = 0
    begin = time.perf_counter()
    for x, y in loader:
        rows += len(y)
        nbytes += x.numel() * x.element_size()
    return rows, nbytes, time.perf_counter() - begin


class SeedFiles(Dataset):
    """The seed guide's per-sample dataset: one torch.load per item."""

    def __init__(self, paths: list[Path], labels: np.ndarray) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.load(self.paths[index], map_location="cpu", weights_only=True)
        return x, torch.tensor(float(self.labels[index]))


def _save_files(directory: str, start: int, labels: np.ndarray, dim: int, seed: int) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), dim, generator=gen)
    x[:, :8] += (2.0 * torch.from_numpy(labels)[:, None].float() - 1.0) * 0.5
    for i in range(len(labels)):
        torch.save(x[i].clone(), os.path.join(directory, f"sample_{start + i}.pt"))  # clone: save one row only


# -- process tree memory --------------------------------------------------------------------------
def _status_kb(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                values[key] = int(rest.split()[0])
    return values


def _pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _descendants(root: int) -> list[int]:
    """root and all its descendants (from /proc/*/task/*/children where the kernel has it, else /proc/*/stat)."""
    kids: dict[int, list[int]] = {}
    if os.path.exists(f"/proc/{root}/task/{root}/children"):
        pending, found = [root], []
        while pending:
            pid = pending.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    pending.extend(int(c) for c in task.read_text().split())
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as file:
                ppid = int(file.read().rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(kids.get(pid, []))
    return found


class TreeMemory(threading.Thread):
    """Samples VmRSS of a process and its descendants every `interval` s (PSS and the tree every 5th)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.done = threading.Event()
        self.peak_main = self.peak_tree = self.peak_tree_pss = self.main_hwm = 0
        self.peak_worker = self.max_processes = self.samples = 0
        self.main_at_peak: dict[str, int] = {}

    def run(self) -> None:
        tree = [self.pid]
        tick = 0
        while not self.done.is_set():
            if tick % 5 == 0:
                with contextlib.suppress(OSError):
                    tree = _descendants(self.pid)
            total = pss = 0
            for pid in tree:
                try:
                    status = _status_kb(pid)
                    if tick % 5 == 0:
                        pss += _pss_kb(pid)
                except (OSError, ValueError):
                    continue
                rss = status.get("VmRSS", 0)
                total += rss
                if pid == self.pid:
                    self.main_hwm = max(self.main_hwm, status.get("VmHWM", 0))
                    if rss > self.peak_main:
                        self.peak_main, self.main_at_peak = rss, status
                else:
                    self.peak_worker = max(self.peak_worker, rss)
            self.peak_tree = max(self.peak_tree, total)
            self.peak_tree_pss = max(self.peak_tree_pss, pss)
            self.max_processes = max(self.max_processes, len(tree))
            self.samples += 1
            tick += 1
            self.done.wait(self.interval)


def run_cli(store: Path, tmp: Path, name: str, max_iterations: int) -> dict[str, Any]:
    """`python -m probe_lab data=store ... probe.optimizer=adamw` as a subprocess, its process tree sampled.

    Output goes to tmp/<name>.log; when the run fails, "error" holds its exit status and last log lines.
    """
    run_dir, log = tmp / name, tmp / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "probe_lab",
        "data=store",
        f"data.path={store}",
        "backend=pytorch",
        "probe.optimizer=adamw",
        f"probe.max_iterations={max_iterations}",
        "probe.early_stopping=false",
        "progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    begin = time.perf_counter()
    timed_out = False
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
        sampler = TreeMemory(process.pid)
        sampler.start()
        try:
            code = process.wait(timeout=900)
        except subprocess.TimeoutExpired:
            process.kill()
            code, timed_out = process.wait(), True
    wall = time.perf_counter() - begin
    sampler.done.set()
    sampler.join()
    result: dict[str, Any] = {"command": " ".join(command), "rc": code, "wall_s": wall, "sampler": sampler}
    metrics_path = run_dir / "metrics.json"
    if code == 0 and metrics_path.is_file():
        result["metrics"] = json.loads(metrics_path.read_text())
    else:
        tail = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()][-3:]
        why = "timed out, " if timed_out else ""
        result["error"] = f"{why}rc={code} after {wall:.0f} s: " + " / ".join(tail)
        print(f"  !! {name} failed: {result['error']}")
    return result


def run_state(run: dict[str, Any]) -> str:
    return f"failed ({run['error']})" if "error" in run else "ok"


# -- reporting ------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[Any]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


def verdict(name: str, met: bool, detail: str) -> str:
    return f"- target {name}: {'met' if met else 'NOT met'} — {detail}"


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / GB


def release(loader: DataLoader) -> None:
    """Stop a loader's persistent workers."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    del loader
    gc.collect()


def loader_runs(
    name: str, dataset: ActivationDataset, paths: list[Path], repeats: int, cold: bool = True
) -> dict[str, Any]:
    """Epochs of the training loader, each (rows, bytes of x, seconds): "first" (workers start, cache warm),
    `repeats` more warm ones ("next": the best of those; "warm": the best of all), then "cold" (shards
    evicted first). An epoch that fails, or delivers other than len(dataset) rows, ends the runs: "error"
    says why, and the epochs measured before it stay.
    """
    loader = stream_loader(dataset)
    result: dict[str, Any] = {}

    def measured(key: str) -> tuple[int, int, float]:
        rows, nbytes, seconds = epoch(loader)
        if rows != len(dataset):
            raise RuntimeError(f"the {key} epoch delivered {rows} rows of {len(dataset)}")
        result[key] = rows, nbytes, seconds
        return result[key]

    try:
        more = [measured("first")] + [measured(f"epoch {k + 2}") for k in range(repeats)]
        result["warm"] = min(more, key=lambda r: r[2])
        if repeats:
            result["next"] = min(more[1:], key=lambda r: r[2])
        if cold:
            evict(paths)
            result["resident"] = resident_fraction(paths)
            measured("cold")
    except Exception as err:  # a worker's crash comes as a RuntimeError; report whatever it is
        message = str(err).strip().splitlines()
        result["error"] = f"{type(err).__name__}: {message[0] if message else ''}"
        print(f"  !! {name} failed: {result['error']}")
    finally:
        release(loader)
    timings = ", ".join(f"{key} {result[key][2]:.2f} s" for key in ("first", "warm", "cold") if key in result)
    resident = f" (resident before the cold epoch {result['resident']:.1%})" if "resident" in result else ""
    print(f"  {name}: {timings}{resident}")
    return result


# -- the targets ----------------------------------------------------------------------------------
def target_loader_vs_plain(args: argparse.Namespace, store: Path, lines: list[str]) -> None:
    print("\n## 1. training data path vs plain sequential read\n")
    paths = shard_paths(store)
    evict(paths)
    cold_before = resident_fraction(paths)
    begin = time.perf_counter()
    dataset = ActivationStore.open(store).dataset(verify=True)
    scan_cold = time.perf_counter() - begin
    file_bytes = sum(p.stat().st_size for p in paths)
    plain: dict[str, tuple[int, float]] = {}
    for mib in (1, 32):
        plain_read(paths, mib * MB)  # warm the cache fully
        plain[f"warm {mib}"] = min((plain_read(paths, mib * MB) for _ in range(args.repeats + 2)), key=lambda r: r[1])
    for mib in (1, 32):
        evict(paths)
        resident = resident_fraction(paths)
        plain[f"cold {mib}"] = plain_read(paths, mib * MB)
        print(f"  plain read cold, {mib} MiB buffer: {plain[f'cold {mib}'][1]:.2f} s (resident before {resident:.1%})")
    best = {cache: max(gbps(*plain[f"{cache} {m}"]) for m in (1, 32)) for cache in ("warm", "cold")}

    plain_read(paths, MB)
    whole = loader_runs("loader, whole store", dataset, paths, args.repeats)
    n_train = round(args.split * len(dataset))
    train = dataset.subset(np.sort(np.random.default_rng(0).choice(len(dataset), n_train, replace=False)))
    plain_read(paths, MB)
    split = loader_runs(f"loader, {args.split:.0%} split", train, paths, args.repeats)

    print(
        f"\nStore: {len(dataset)} rows × {dataset.dim} float16 = {dataset.nbytes() / GB:.2f} GB in {len(paths)} shards "
        f"({file_bytes / GB:.2f} GB of files). Open + scan with checksums, cold cache (resident before "
        f"{cold_before:.1%}): {scan_cold:.2f} s, {dataset.nbytes() / scan_cold / GB:.2f} GB/s.\n"
    )
    rows: list[list[Any]] = []
    for key in ("warm 1", "warm 32", "cold 1", "cold 32"):
        nbytes, seconds = plain[key]
        cache, mib = key.split()
        rows.append([f"plain readinto, {mib} MiB buffer, shard files", cache, "", f"{nbytes / GB:.2f}",
                     f"{seconds:.2f}", f"{gbps(nbytes, seconds):.2f}", ""])  # fmt: skip
    warm_label = "warm" if args.repeats else "warm (first epoch, incl. worker start)"
    loaders = {
        f"ProbeDataModule train loader, whole store ({len(dataset)} rows)": whole,
        f"ProbeDataModule train loader, {args.split:.0%} split ({n_train} rows)": split,
    }
    for label, runs in loaders.items():
        measured = [("warm, first epoch (incl. worker start)", "first", "warm")] if args.repeats else []
        measured += [(warm_label, "warm", "warm"), ("cold", "cold", "cold")]
        for cache, key, base in measured:
            if key in runs:
                count, nbytes, seconds = runs[key]
                rate = gbps(nbytes, seconds)
                rows.append([label, cache, count, f"{nbytes / GB:.2f}", f"{seconds:.2f}", f"{rate:.2f}",
                             f"{rate / best[base]:.0%}"])  # fmt: skip
        if "error" in runs:
            rows.append([label, "failed (below)", "", "", "", "", ""])
    table(["reader", "page cache", "rows", "GB delivered", "s", "GB/s", "vs best plain read, same cache"], rows)
    failures = [f"{label}: {runs['error']}" for label, runs in loaders.items() if "error" in runs]
    for failure in failures:
        print(f"Failed — {failure}\n")

    def ratio(runs: dict[str, Any], cache: str) -> float:
        return gbps(*runs[cache][1:]) / best[cache] if cache in runs else float("nan")

    def rate(runs: dict[str, Any], cache: str) -> str:
        return f"{gbps(*runs[cache][1:]):.2f} GB/s" if cache in runs else "failed"

    print(
        f"Ratios (loader / best plain read): whole store warm {ratio(whole, 'warm'):.0%}, cold "
        f"{ratio(whole, 'cold'):.0%}; {args.split:.0%} split (delivered training rows) warm "
        f"{ratio(split, 'warm'):.0%}, cold {ratio(split, 'cold'):.0%}.\n"
    )
    lines.append(
        verdict(
            "1 (loader ≥ 70% of a plain sequential read, warm)",
            all(ratio(runs, "warm") >= 0.7 for runs in (whole, split)) and not failures,
            f"whole store {ratio(whole, 'warm'):.0%} ({rate(whole, 'warm')} vs {best['warm']:.2f} GB/s), "
            f"{args.split:.0%} split {ratio(split, 'warm'):.0%} ({rate(split, 'warm')}); cold: whole "
            f"{ratio(whole, 'cold'):.0%} ({rate(whole, 'cold')} vs {best['cold']:.2f} GB/s), split "
            f"{ratio(split, 'cold'):.0%}" + "".join(f"; {failure}" for failure in failures),
        )
    )


def target_peak_rss(args: argparse.Namespace, store: Path, tmp: Path, lines: list[str]) -> None:
    print("\n## 2. peak RSS of an adamw run on the store\n")
    run = run_cli(store, tmp, "run-adamw", 2)
    s: TreeMemory = run["sampler"]
    m = run.get("metrics", {})
    print(f"`{run['command']}`\n")
    table(["run", "train / val / test rows", "wall s", "scan s", "fit s", "epochs", "peak RSS main MB",
           "VmHWM main MB", "peak RSS one worker MB", "peak RSS tree sum MB", "peak PSS tree sum MB", "processes",
           "test AUROC"], [[
        "ok" if "error" not in run else "failed (below)",
        f"{m.get('n_train', '-')} / {m.get('n_val', '-')} / {m.get('n_test', '-')}",
        f"{run['wall_s']:.1f}",
        f"{m.get('timings', {}).get('read_seconds', float('nan')):.1f}",
        f"{m.get('fit_seconds', float('nan')):.1f}",
        m.get("fit", {}).get("epochs", "-"),
        f"{s.peak_main / 1024:.0f}",
        f"{s.main_hwm / 1024:.0f}",
        f"{s.peak_worker / 1024:.0f}",
        f"{s.peak_tree / 1024:.0f}",
        f"{s.peak_tree_pss / 1024:.0f}",
        s.max_processes,
        f"{m.get('test', {}).get('auroc', float('nan')):.4f}",
    ]])  # fmt: skip
    if "error" in run:
        print(f"Failed — {run['error']}\n")
    at = s.main_at_peak
    print(
        f"Main process at its peak: anon {at.get('RssAnon', 0) / 1024:.0f} MB, file {at.get('RssFile', 0) / 1024:.0f} "
        f"MB, shmem {at.get('RssShmem', 0) / 1024:.0f} MB; {s.samples} samples. The tree's RSS sum counts the pages "
        "shared between processes (torch's libraries after fork, shared-memory batches) once per process; the PSS "
        "sum counts them once.\n"
    )
    peak = max(s.peak_main, s.main_hwm) / 1024
    tree_pss = s.peak_tree_pss / 1024
    store_gb = ActivationStore.open(store).manifest.nbytes / GB
    lines.append(
        verdict(
            f"2 (peak RSS ≤ 1.5 GB training adamw on a {store_gb:.1f} GB store)",
            "error" not in run and peak <= 1536 and tree_pss <= 1536,
            f"main process {peak:.0f} MB (VmHWM; {'within' if peak <= 1536 else 'over'}), whole process tree "
            f"{tree_pss:.0f} MB PSS ({'within' if tree_pss <= 1536 else 'over'}; {s.peak_tree / 1024:.0f} MB as a "
            f"sum of RSS, one worker up to {s.peak_worker / 1024:.0f} MB RSS)"
            + (f"; the run failed: {run['error']}" if "error" in run else ""),
        )
    )


def target_files(args: argparse.Namespace, tmp: Path, lines: list[str]) -> None:
    print("\n## 3. one epoch: store vs per-sample .pt files\n")
    directory = tmp / "pt_files"
    directory.mkdir()
    labels = np.random.default_rng(1).integers(0, 2, args.files).astype(np.int64)
    labels_path = tmp / "pt_labels.npy"
    np.save(labels_path, labels)
    chunk = 5000
    begin = time.perf_counter()
    # spawn, not fork: this process already runs thread pools (OpenMP, DataLoader), and forked children hang.
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [
            pool.submit(_save_files, str(directory), start, labels[start : start + chunk], args.file_dim, start)
            for start in range(0, args.files, chunk)
        ]
        for job in jobs:
            job.result()
    create_s = time.perf_counter() - begin
    file_bytes = sum(entry.stat().st_size for entry in os.scandir(directory))
    payload = args.files * args.file_dim * 4
    print(f"  created {args.files} files in {create_s:.1f} s (2 spawned processes), {file_bytes / GB:.3f} GB on disk")

    begin = time.perf_counter()
    manifest = convert(directory, tmp / "pt_store", labels_path, dtype=args.file_store_dtype)
    convert_s = time.perf_counter() - begin
    print(f"  converted in {convert_s:.1f} s")

    paths = natural_sorted(list(directory.glob("*.pt")))
    seed_loader = DataLoader(SeedFiles(paths, labels), batch_size=SEED_BATCH, shuffle=True, num_workers=0)
    seed_rows = 0
    begin = time.perf_counter()
    for _, y in seed_loader:
        seed_rows += len(y)
    seed_s = time.perf_counter() - begin
    print(f"  seed loader epoch {seed_s:.1f} s")

    begin = time.perf_counter()
    dataset = ActivationStore.open(tmp / "pt_store").dataset(verify=True)
    scan_s = time.perf_counter() - begin
    runs = loader_runs("store loader", dataset, [], max(1, args.repeats), cold=False)

    per_row = args.file_dim * 4
    seed_rate = seed_rows / seed_s
    rows = [["seed: DataLoader(batch 4096, shuffle, num_workers=0), torch.load per file", seed_rows, f"{seed_s:.2f}",
             f"{seed_rate:,.0f}", f"{seed_rate * per_row / GB:.3f}", "1×"]]  # fmt: skip
    for label, key in (
        ("store: ProbeDataModule loader, first epoch (incl. worker start)", "first"),
        ("store: ProbeDataModule loader, next epochs (best)", "next"),
    ):
        if key in runs:
            count, _, seconds = runs[key]
            rate = count / seconds
            rows.append([label, count, f"{seconds:.2f}", f"{rate:,.0f}", f"{rate * per_row / GB:.3f}",
                         f"{rate / seed_rate:.0f}×"])  # fmt: skip
    if "error" in runs:
        rows.append(["store: ProbeDataModule loader", "failed (below)", "", "", "", ""])
    print(
        f"\n{args.files} samples × {args.file_dim} float32 ({payload / GB:.2f} GB of values; {file_bytes / GB:.2f} GB "
        f"as .pt files, {file_bytes / args.files:.0f} B each). Creating the files with torch.save: {create_s:.1f} s "
        f"(2 spawned processes, {args.files / create_s:,.0f} files/s). probe_lab.convert.convert to a "
        f"{args.file_store_dtype} store: {convert_s:.1f} s ({args.files / convert_s:,.0f} samples/s, "
        f"{manifest.nbytes / GB:.2f} GB). "
        f"Opening the store (scan with checksums): {scan_s:.2f} s. Page cache warm for all. "
        "GB/s counts float32 values.\n"
    )
    table(["reader", "samples", "s", "samples/s", "GB/s", "vs seed"], rows)
    if "error" in runs:
        print(f"Failed — store loader: {runs['error']}\n")

    def ratio(key: str, extra_s: float = 0.0) -> float:
        return runs[key][0] / (runs[key][2] + extra_s) / seed_rate if key in runs else float("nan")

    print(
        f"Ratios (store / seed, samples/s): first epoch {ratio('first'):.0f}×, later epochs {ratio('next'):.0f}×, "
        f"first epoch plus the store's scan {ratio('first', scan_s):.0f}×.\n"
    )
    lines.append(
        verdict(
            f"3 (epoch over a store ≥ 100× the per-file loader, {args.files} samples)",
            ratio("first") >= 100 and "error" not in runs,
            f"{ratio('first'):.0f}× on the first epoch (incl. worker start), {ratio('next'):.0f}× on later epochs, "
            f"{ratio('first', scan_s):.0f}× counting the store's scan"
            + (f"; the loader failed: {runs['error']}" if "error" in runs else ""),
        )
    )


def target_scaling(args: argparse.Namespace, tmp: Path, pool: list, lines: list[str]) -> None:
    print("\n## 4. N, 2N, 4N rows\n")
    results = []
    inproc: tuple[int, int, float] | None = None
    for factor in (1, 2, 4):
        rows = factor * args.scale_rows
        store = tmp / f"scale-{factor}"
        written = write_store(store, rows, args.dim, pool)
        begin = time.perf_counter()
        dataset = ActivationStore.open(store).dataset(verify=True)
        scan_s = time.perf_counter() - begin
        runs = loader_runs(f"{rows} rows, loader", dataset, [], args.repeats, cold=False)
        if factor == 1:
            in_process = stream_loader(dataset, num_workers=0)
            inproc = epoch(in_process)
            release(in_process)
        del dataset
        run = run_cli(store, tmp, f"run-scale-{factor}", 1)
        print(f"  {rows} rows: run {run['wall_s']:.1f} s ({run_state(run)})")
        results.append((rows, written, scan_s, runs, run))
        shutil.rmtree(store)
    table_rows = []
    for rows, written, scan_s, runs, run in results:
        m = run.get("metrics", {})
        s: TreeMemory = run["sampler"]
        mrows = rows / 1e6
        warm = runs["warm"][2] if "warm" in runs else float("nan")
        table_rows.append([
            rows,
            f"{written['bytes'] / GB:.2f}",
            f"{written['bytes'] / written['write_s'] / GB:.2f}",
            f"{scan_s:.2f}",
            f"{warm:.2f}" if "error" not in runs else "failed",
            f"{warm / mrows:.2f}",
            "ok" if "error" not in run else "failed",
            f"{run['wall_s']:.1f}",
            f"{run['wall_s'] / mrows:.1f}",
            f"{m.get('fit_seconds', float('nan')):.1f}",
            f"{max(s.peak_main, s.main_hwm) / 1024:.0f}",
            f"{s.peak_tree / 1024:.0f}",
            f"{s.peak_tree_pss / 1024:.0f}",
        ])  # fmt: skip
    table(["rows", "GB", "write GB/s", "scan s", "streamed epoch s (warm)", "epoch s / M rows", "adamw run",
           "run wall s", "run s / M rows", "fit s", "peak RSS main MB", "peak RSS tree MB", "peak PSS tree MB"],
          table_rows)  # fmt: skip
    failures = [f"{rows} rows, loader: {runs['error']}" for rows, _, _, runs, _ in results if "error" in runs]
    failures += [f"{rows} rows, adamw run: {run['error']}" for rows, _, _, _, run in results if "error" in run]
    for failure in failures:
        print(f"Failed — {failure}\n")
    if inproc is not None:
        print(
            f"Diagnostic: the same loader with num_workers=0 (StreamedBatches in the main process) at "
            f"{results[0][0]} rows: {inproc[2]:.2f} s, {gbps(inproc[1], inproc[2]):.2f} GB/s.\n"
        )
    x = np.array([r[0] for r in results], dtype=float)
    fits = {}
    for name, values in (
        ("streamed epoch", [r[3]["warm"][2] if "warm" in r[3] else np.nan for r in results]),
        ("adamw run", [np.nan if "error" in r[4] else r[4]["wall_s"] for r in results]),
    ):
        values = np.array(values)
        if np.isnan(values).any():
            fits[name] = (np.nan, np.nan, np.nan)
            print(f"Least squares, {name}: not fitted (a run failed).")
            continue
        slope, intercept = np.polyfit(x, values, 1)
        residual = np.max(np.abs(np.polyval([slope, intercept], x) - values) / values)
        fits[name] = (slope * 1e6, intercept, residual)
        print(
            f"Least squares, {name}: {intercept:.2f} s + {slope * 1e6:.2f} s per M rows; "
            f"largest relative residual {residual:.1%}."
        )
    peaks = [max(r[4]["sampler"].peak_main, r[4]["sampler"].main_hwm) / 1024 for r in results]
    growth = peaks[-1] / peaks[0] - 1
    print(f"Peak RSS of the main process from N to 4N: {peaks[0]:.0f} → {peaks[-1]:.0f} MB ({growth:+.0%}).\n")
    linear = all(fit[2] <= 0.15 for fit in fits.values())
    epoch_fit, run_fit = fits["streamed epoch"], fits["adamw run"]
    tree = [r[4]["sampler"].peak_tree_pss / 1024 for r in results]
    lines.append(
        verdict(
            "4 (linear time, flat memory at N, 2N, 4N)",
            linear and growth <= 0.2 and not failures,
            f"time {'linear' if linear else 'not linear'} (affine fits within 15%), main-process memory "
            f"{'flat' if growth <= 0.2 else 'not flat'} (within 20%): streamed epoch {epoch_fit[0]:.2f} s/M rows + "
            f"{epoch_fit[1]:.2f} s (max residual {epoch_fit[2]:.0%}), "
            f"adamw run {run_fit[0]:.1f} s/M rows + {run_fit[1]:.1f} s (max residual {run_fit[2]:.0%}); "
            f"peak main RSS {peaks[0]:.0f} → {peaks[1]:.0f} → {peaks[2]:.0f} MB, process tree PSS "
            f"{tree[0]:.0f} → {tree[1]:.0f} → {tree[2]:.0f} MB" + "".join(f"; {failure}" for failure in failures),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=730_000, help="rows of the big store (targets 1 and 2)")
    parser.add_argument("--dim", type=int, default=4096, help="width of the float16 stores (targets 1, 2, 4)")
    parser.add_argument("--split", type=float, default=0.6, help="fraction of rows in the training subset")
    parser.add_argument("--files", type=int, default=100_000, help="per-sample .pt files (target 3)")
    parser.add_argument("--file-dim", type=int, default=1024, help="width of the .pt samples")
    parser.add_argument("--file-store-dtype", default="float32", help="dtype the .pt samples are converted to")
    parser.add_argument("--scale-rows", type=int, default=65_536, help="N of target 4")
    parser.add_argument(
        "--repeats", type=int, default=0, help="warm epochs after the first (the best is kept; the .pt test does >= 1)"
    )
    parser.add_argument("--tmp", default="/tmp", help="parent of the scratch folder")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--targets", default="1234", help="which targets to run")
    args = parser.parse_args()

    mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    print(f"# store_io — {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(
        f"# {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, {mem_kb / 2**20:.1f} GiB RAM, "
        f"Linux {platform.release()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}, numpy {np.__version__}"
    )
    print(f"# flags: {vars(args)}")
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="store_io-", dir=args.tmp))
    print(f"# scratch: {tmp}")
    lines: list[str] = []
    start = time.perf_counter()
    try:
        pool = block_pool(args.dim, seed=0)
        if "1" in args.targets or "2" in args.targets:
            store = tmp / "store"
            written = write_store(store, args.rows, args.dim, pool)
            durable = written["bytes"] / (written["write_s"] + written["fsync_s"]) / GB
            print(
                f"\nWrote {args.rows} × {args.dim} float16 ({written['bytes'] / GB:.2f} GB) with create + append "
                f"({POOL_ROWS}-row blocks) and close: {written['write_s']:.2f} s, "
                f"{written['bytes'] / written['write_s'] / GB:.2f} GB/s (whatever the writer itself syncs included); "
                f"a further fsync of every shard {written['fsync_s']:.2f} s ({durable:.2f} GB/s with it)."
            )
            if "1" in args.targets:
                target_loader_vs_plain(args, store, lines)
            if "2" in args.targets:
                target_peak_rss(args, store, tmp, lines)
            shutil.rmtree(store)
        if "3" in args.targets:
            target_files(args, tmp, lines)
        if "4" in args.targets:
            target_scaling(args, tmp, pool, lines)
    finally:
        if args.keep:
            print(f"# kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n## targets\n")
    print("\n".join(lines))
    print(
        f"\n# total {time.perf_counter() - start:.0f} s; load average at end: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
