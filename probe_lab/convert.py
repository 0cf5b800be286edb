"""`python -m probe_lab.convert SRC DST --labels LABELS [--dtype float16]`: build an activation store.

SRC is an .npy file (N×D or N×L×D, memory-mapped) or a directory of per-sample tensor files (the
seed guide's layout, read with `torch.load(weights_only=True)` in natural name order). The store is
written into a hidden folder next to DST and moved into place only when complete, so a failed or
interrupted conversion leaves nothing behind, and an existing store is replaced only with
--overwrite (and only if it is a store).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from probe_lab.artifacts import staged_folder
from probe_lab.data.sources import read_labels
from probe_lab.data.tables import DTYPES, MappedFile, map_npy, nonfinite_rows
from probe_lab.data.tensor_files import as_vector, list_tensor_files, load_tensor_file, sample_shape
from probe_lab.errors import ProbeLabError
from probe_lab.locks import writing
from probe_lab.report.progress import progress_counter
from probe_lab.store import MANIFEST, ActivationStore, Manifest
from probe_lab.version import version_line

PROG = "probe_lab.convert"
BLOCK_MB = 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="an .npy file (N×D or N×L×D) or a directory of .pt tensor files")
    parser.add_argument("dst", type=Path, help="the store directory to create")
    parser.add_argument("--labels", type=Path, required=True, help="0/1 labels: a .npy file or text, one per line")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float16", help="stored precision (float16)")
    parser.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MB (256)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at DST")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--version", action="version", version=version_line("probe_lab.convert"))
    args = parser.parse_args(argv)
    try:
        manifest = convert(
            args.src,
            args.dst,
            args.labels,
            dtype=args.dtype,
            shard_mb=args.shard_mb,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ProbeLabError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a permission denied: one line naming the file
        print(f"{PROG}: error: {err.filename or args.dst}: {err.strerror or err}", file=sys.stderr)
        return 2
    layers = f" × {manifest.layers} layers" if manifest.layers else ""
    print(
        f"{PROG}: {manifest.rows} rows × {manifest.dim} dims{layers}, {manifest.dtype}, "
        f"{_size(manifest.nbytes)} in {len(manifest.shards)} shards → {args.dst}"
    )
    return 0


def convert(
    src: Path,
    dst: Path,
    labels_path: Path,
    *,
    dtype: str = "float16",
    shard_mb: float = 256.0,
    overwrite: bool = False,
    progress: bool = False,
) -> Manifest:
    """Write the store; every check that can fail runs before DST is touched. DST is locked while it
    is written (`probe_lab.locks`): a second conversion into it refuses instead of replacing it."""
    if dtype not in DTYPES:
        raise ProbeLabError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    _check_destination(dst, overwrite)
    source = _open_source(src)
    labels = read_labels(str(labels_path), "--labels", True)
    assert labels is not None
    if len(labels) != source.rows:
        raise ProbeLabError(f"{labels_path}: {len(labels)} labels but {src} holds {source.rows} rows")
    with writing(dst, "store"):
        _check_destination(dst, overwrite)  # again: another conversion may have finished meanwhile
        return _write_store(source, src, dst, labels, dtype=dtype, shard_mb=shard_mb, progress=progress)


def _write_store(
    source: _Source, src: Path, dst: Path, labels: np.ndarray, *, dtype: str, shard_mb: float, progress: bool
) -> Manifest:
    target = DTYPES[dtype]
    with staged_folder(dst) as staging:
        writer = ActivationStore.create(staging, source.dim, source.layers, dtype, shard_mb=shard_mb, overwrite=True)
        nonfinite = 0
        with writer, progress_counter(source.rows, desc="convert", unit="rows", enabled=progress) as bar:
            for start, block in source.blocks():
                cast = block.to(target)
                overflowed = int((torch.isfinite(block) & ~torch.isfinite(cast)).sum())
                if overflowed:
                    raise ProbeLabError(
                        f"{src}: {overflowed} values from row {start} on overflow {dtype}; "
                        "use --dtype bfloat16 or float32"
                    )
                nonfinite += int(nonfinite_rows(cast, target).reshape(len(cast), -1).any(axis=1).sum())
                writer.append(cast, labels[start : start + len(block)])
                bar.update(len(block))
        manifest = Manifest.read(staging / MANIFEST)
    if nonfinite:
        print(
            f"{PROG}: warning: {nonfinite} rows hold NaN or Inf "
            "(training fails on them unless data.drop_nonfinite=true)"
        )
    return manifest


class _Source:
    """Rows of the input, read in blocks of about BLOCK_MB, as (k, D) or (k, L, D) tensors."""

    def __init__(self, rows: int, dim: int, layers: int | None, blocks: Iterator[tuple[int, torch.Tensor]]) -> None:
        self.rows, self.dim, self.layers = rows, dim, layers
        self._blocks = blocks

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        return self._blocks


def _open_source(src: Path) -> _Source:
    if src.is_dir():
        return _tensor_files(src)
    if not src.is_file():
        raise ProbeLabError(f"{src}: not found")
    try:
        array = map_npy(src)
    except (ValueError, OSError, EOFError) as err:
        raise ProbeLabError(f"{src}: not a readable .npy array ({str(err).splitlines()[0]})") from None
    if array.dtype.kind != "f" or len(array.shape) not in (2, 3):
        raise ProbeLabError(
            f"{src}: expected floating-point activations (N, D) or (N, L, D), got {array.dtype} {array.shape}"
        )
    rows, dim = int(array.shape[0]), int(array.shape[-1])
    layers = int(array.shape[1]) if len(array.shape) == 3 else None
    step = max(1, (BLOCK_MB << 20) // (int(np.prod(array.shape[1:])) * array.dtype.itemsize))

    def blocks() -> Iterator[tuple[int, torch.Tensor]]:
        values = array.array() if isinstance(array, MappedFile) else array
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            block = torch.from_numpy(np.array(values[start:stop], copy=True))
            if isinstance(array, MappedFile):
                array.release(start, stop)
            yield start, block

    return _Source(rows, dim, layers, blocks())


def _tensor_files(directory: Path) -> _Source:
    paths = list_tensor_files(directory, str(directory))
    shape = sample_shape(load_tensor_file(paths[0]), paths[0])
    step = max(1, (BLOCK_MB << 20) // (int(np.prod(shape)) * 4))

    def blocks() -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(paths), step):
            chunk = paths[start : start + step]
            # float32 holds float16/bfloat16 files exactly, so files of mixed dtypes meet the overflow check intact.
            block = torch.empty((len(chunk), *shape), dtype=torch.float32)
            for i, path in enumerate(chunk):
                tensor = load_tensor_file(path)
                if len(shape) == 1:  # (1, D) is one vector, as data=pt_files reads it
                    tensor = as_vector(tensor)
                if tuple(tensor.shape) != shape:
                    raise ProbeLabError(f"{path}: has shape {tuple(tensor.shape)}, the first file has {shape}")
                block[i] = tensor
            yield start, block

    return _Source(len(paths), shape[-1], shape[0] if len(shape) == 2 else None, blocks())


def _check_destination(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise ProbeLabError(f"{dst}: exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()):
        if not overwrite:
            raise ProbeLabError(f"{dst}: already exists (pass --overwrite to replace it)")
        if not (dst / MANIFEST).is_file():
            raise ProbeLabError(f"{dst}: is not an activation store (no {MANIFEST}); refusing to overwrite it")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.2f} MB"


if __name__ == "__main__":
    sys.exit(main())
