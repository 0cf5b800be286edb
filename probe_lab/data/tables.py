"""Where activation rows live and how a batch of them is read: `RowTable` and its kinds.

A table holds N rows of width D, optionally with a layer axis (N×L×D), in one storage dtype
(float32, float16 or bfloat16), and reads any ascending set of rows in one call, in that dtype.
`ArrayTable` wraps an in-memory array or a file region mapped into memory (`MappedFile`);
`TensorFileTable` reads the seed's one-tensor-file-per-sample layout (probe_lab.data.tensor_files);
`DeviceTable` holds rows already on an accelerator (a GPU), where reads stay. The activation store's
sharded table (probe_lab.store) is a sequence of `ArrayTable`s.

Mapped files are read through `mmap` rather than `np.memmap` so that the pages a read touched can be
dropped from this process (`madvise(MADV_DONTNEED)`) right after the copy: the page cache keeps
them, but the process's resident memory stays flat however much of a large file it streams.
"""

from __future__ import annotations

import mmap
import os
import tokenize
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from probe_lab.data.tensor_files import load_tensor_file, sample_shape, sample_vector
from probe_lab.errors import ProbeLabError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# numpy has no bfloat16: its values are kept as their 16-bit patterns and viewed as bfloat16 in torch.
NUMPY_STORAGE = {torch.float32: np.dtype("<f4"), torch.float16: np.dtype("<f2"), torch.bfloat16: np.dtype("<u2")}
# |bits| at or above this pattern (sign cleared) is Inf or NaN.
_NONFINITE_BITS = {torch.float16: (np.uint16, 0x7FFF, 0x7C00), torch.bfloat16: (np.uint16, 0x7FFF, 0x7F80)}
_NONFINITE_BITS[torch.float32] = (np.uint32, 0x7FFFFFFF, 0x7F800000)


class RowTable(ABC):
    """N rows of D values (optionally L layers each) in one storage dtype.

    `boundaries` are the row indices where contiguous storage segments (shards) start, plus N;
    streaming reads never cross them. `nonfinite` is a per-row (N,) or per-row-and-layer (N, L)
    mask when a scan has already computed it, else None.
    """

    n_rows: int
    dim: int
    layers: int | None
    dtype: torch.dtype
    nonfinite: np.ndarray | None = None

    @property
    def boundaries(self) -> np.ndarray:
        return np.array([0, self.n_rows])

    @property
    def nonfinite_known(self) -> bool:
        """Whether the NaN/Inf rows are known without reading the rows (a scan found them)."""
        return self.nonfinite is not None

    @abstractmethod
    def read(self, rows: np.ndarray, layer: int | None) -> torch.Tensor:
        """Rows (ascending indices) as a (k, D) tensor in `dtype`; `layer` picks one of L layers."""

    def read_into(self, rows: np.ndarray, layer: int | None, out: torch.Tensor) -> None:
        """`read`, written into `out` (k, D) of `dtype`: streaming reuses one buffer for every read."""
        out.copy_(self.read(rows, layer))

    def read_onto(self, rows: np.ndarray, layer: int | None, device: torch.device) -> torch.Tensor | None:
        """The rows (any order) made on `device` directly, by a table that can (drawn rows); None for
        one whose rows reach a device through host memory."""
        return None


class MappedFile:
    """A read-only array over a region of a file, mapped on first use (and again after pickling)."""

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.offset, self.dtype, self.shape = path, offset, dtype, shape
        self._mmap: mmap.mmap | None = None
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        # Worker processes map the file themselves; a mapping cannot be pickled.
        return {**self.__dict__, "_mmap": None, "_array": None}

    def array(self) -> np.ndarray:
        if self._array is None:
            count = int(np.prod(self.shape))
            with open(self.path, "rb") as file:
                self._mmap = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if count else None
            buffer = self._mmap if self._mmap is not None else b""
            flat = np.frombuffer(buffer, dtype=self.dtype, count=count, offset=self.offset if count else 0)
            self._array = flat.reshape(self.shape)  # assigned once shaped: reader threads share this object
        return self._array

    def release(self, first_row: int, stop_row: int) -> None:
        """Drop the pages of rows [first_row, stop_row) from this process (they stay in the page cache)."""
        if self._mmap is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        start = self.offset + first_row * row_bytes
        aligned = start - start % mmap.PAGESIZE
        self._mmap.madvise(mmap.MADV_DONTNEED, aligned, self.offset + stop_row * row_bytes - aligned)

    def close(self) -> None:
        """Unmap the file, giving back its file handle; the next read maps it again."""
        if self._mmap is None:
            return
        self._array = None
        try:
            self._mmap.close()
        except BufferError:  # a caller still holds a view of the mapping: keep it open
            return
        self._mmap = None


class ArrayTable(RowTable):
    """Rows of an (N, D) or (N, L, D) array held in memory or mapped from a file.

    `dtype` is the storage dtype; for bfloat16 the array holds the 16-bit patterns (uint16).
    Arrays of other float types (float64) are read as float32.
    """

    def __init__(self, array: np.ndarray | MappedFile, dtype: torch.dtype | None = None) -> None:
        self._source = array
        shape = array.shape
        if len(shape) not in (2, 3):
            raise ValueError(f"expected an (N, D) or (N, L, D) array, got shape {shape}")
        self.n_rows, self.dim = int(shape[0]), int(shape[-1])
        self.layers = int(shape[1]) if len(shape) == 3 else None
        self.dtype = dtype or (torch.float16 if array.dtype == np.float16 else torch.float32)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self._source.shape)) * NUMPY_STORAGE[self.dtype].itemsize

    def close(self) -> None:
        """Give back the file handle of a mapped table (reading maps it again)."""
        if isinstance(self._source, MappedFile):
            self._source.close()

    def read_into(self, rows: np.ndarray, layer: int | None, out: torch.Tensor) -> None:
        mapped = self._source if isinstance(self._source, MappedFile) else None
        array = mapped.array() if mapped is not None else self._source
        if len(rows) == 0:
            return
        target = (out.view(torch.int16) if self.dtype == torch.bfloat16 else out).numpy()
        source = array if self.layers is None else array[:, layer]
        first, last = int(rows[0]), int(rows[-1])
        if last - first + 1 == len(rows) and bool(np.all(np.diff(rows) == 1)):
            np.copyto(target, source[first : last + 1], casting="unsafe")
        elif source.dtype == target.dtype or self.dtype == torch.bfloat16:
            np.take(source, rows, axis=0, out=target.view(source.dtype))
        else:  # e.g. float64 arrays read as float32
            np.copyto(target, source[rows], casting="unsafe")
        if mapped is not None:
            mapped.release(first, last + 1)

    def read(self, rows: np.ndarray, layer: int | None) -> torch.Tensor:
        out = torch.empty((len(rows), self.dim), dtype=self.dtype)
        self.read_into(rows, layer, out)
        return out


def host_table(rows: torch.Tensor) -> ArrayTable:
    """A host tensor (N, D) or (N, L, D) of a storage dtype as an `ArrayTable` over its memory, not
    copied (bfloat16 as its bit patterns)."""
    array = rows.view(torch.int16).numpy().view(np.uint16) if rows.dtype == torch.bfloat16 else rows.numpy()
    return ArrayTable(array, rows.dtype)


class DeviceTable(RowTable):
    """Rows of a tensor (N, D) or (N, L, D) held on a device such as a GPU; reads return tensors on
    that device (a view when the rows are consecutive), so data loaded once is never copied back."""

    def __init__(self, tensor: torch.Tensor, *, nonfinite: np.ndarray | None = None) -> None:
        """nonfinite: the NaN/Inf rows when a scan already found them (else found on first use)."""
        if tensor.dtype not in DTYPE_NAMES:
            raise ValueError(f"expected float32, float16 or bfloat16 activations, got {tensor.dtype}")
        if tensor.ndim not in (2, 3):
            raise ValueError(f"expected an (N, D) or (N, L, D) tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor
        self.n_rows, self.dim = int(tensor.shape[0]), int(tensor.shape[-1])
        self.layers = int(tensor.shape[1]) if tensor.ndim == 3 else None
        self.dtype = tensor.dtype
        self._nonfinite = nonfinite

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @property
    def nonfinite_known(self) -> bool:
        """Whether the NaN/Inf rows are already known (from a scan, or a pass made earlier)."""
        return self._nonfinite is not None

    @property
    def nonfinite(self) -> np.ndarray:  # type: ignore[override]
        """NaN/Inf rows (N,) or (N, L), found on the device in one pass and kept."""
        if self._nonfinite is None:
            blocks = [~torch.isfinite(block).all(dim=-1) for block in self.tensor.split(_DEVICE_BLOCK_ROWS)]
            self._nonfinite = torch.cat(blocks).cpu().numpy() if blocks else np.zeros(0, dtype=bool)
        return self._nonfinite

    def read(self, rows: np.ndarray, layer: int | None) -> torch.Tensor:
        source = self.tensor if self.layers is None else self.tensor[:, layer]
        if len(rows) and bool(np.all(np.diff(rows) == 1)):
            return source[int(rows[0]) : int(rows[-1]) + 1]
        return source.index_select(0, torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device))


# Rows per block of a device-side pass (finiteness): bounds its temporary mask, not its speed.
_DEVICE_BLOCK_ROWS = 1 << 16


class TensorFileTable(RowTable):
    """One tensor file per row, (D,) or (L, D), read with `torch.load(weights_only=True)` as float32."""

    dtype = torch.float32

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.n_rows = len(self.paths)
        shape = sample_shape(load_tensor_file(self.paths[0]), self.paths[0])
        self.layers = shape[0] if len(shape) == 2 else None
        self.dim = shape[-1]

    def read(self, rows: np.ndarray, layer: int | None) -> torch.Tensor:
        out = torch.empty((len(rows), self.dim), dtype=torch.float32)
        for i, row in enumerate(rows):
            out[i] = self._load(self.paths[row], layer)
        return out

    def _load(self, path: Path, layer: int | None) -> torch.Tensor:
        vector = sample_vector(load_tensor_file(path), path, layer)
        if vector.shape[0] != self.dim:
            raise ProbeLabError(f"{path}: has {vector.shape[0]} values, the other samples have {self.dim}")
        return vector.float()


def map_npy(path: Path) -> MappedFile | np.ndarray:
    """An .npy file's array, mapped without reading it (C order), or loaded lazily by numpy (Fortran order)."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        if version not in ((1, 0), (2, 0)):
            return np.load(path, mmap_mode="r", allow_pickle=False)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        try:
            shape, fortran_order, dtype = read_header(file)
        except (SyntaxError, tokenize.TokenError) as err:  # numpy parses the header as a Python literal
            raise ValueError(f"the .npy header is not readable ({err})") from None
        offset = file.tell()
    if fortran_order or dtype.hasobject:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if os.path.getsize(path) < expected:
        raise ValueError(f"file is truncated: {os.path.getsize(path)} bytes, the header says {expected}")
    return MappedFile(path, offset, dtype, tuple(int(s) for s in shape))


def nonfinite_rows(block: np.ndarray | torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """Which rows of a (k, ..., D) block in storage dtype hold NaN or Inf: bool (k, ...).

    Integer bit tests over the raw patterns: several times faster than isfinite on half precision.
    """
    if isinstance(block, torch.Tensor):
        block = (block.view(torch.int16) if block.dtype == torch.bfloat16 else block).numpy()
    if dtype not in _NONFINITE_BITS:
        return ~np.isfinite(block).all(axis=-1)
    int_type, magnitude, threshold = _NONFINITE_BITS[dtype]
    bits = np.bitwise_and(block.view(int_type), int_type(magnitude))
    return bits.max(axis=-1, initial=0) >= threshold
