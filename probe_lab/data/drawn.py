"""`data=drawn`: activation-like rows drawn block by block where they are read, never held whole.

For runs larger than host memory that have no store on disk (a data-parallel fit over several GPUs,
each process holding a shard of a training split that no one machine could hold): every row's label
is drawn first, on the host (8 bytes a row), so the splits are made before any row exists; the rows
themselves are drawn only when a split is read, a block of `DRAW_BLOCK_ROWS` rows at a time, each
block from a generator seeded by (seed, block). A process that reads its shard draws only the blocks
its rows fall in; two processes that read the same row get the same values.

The distribution is `synthetic.activation_like`'s, drawn in another order. There, z ~ N(0, I) and
y ~ Bernoulli(σ(signal · z·d)) for the planted unit direction d. Here s = z·d ~ N(0, 1) and y are
drawn for every row first, and a row's z = g − (g·d)d + s·d for g ~ N(0, I) of its block: the same
joint law of (z, y), with x = mean + z ⊙ scales.

Where the rows are drawn decides their values: on the GPU when the machine has one (the current CUDA
device of the reading process; GPUs of one kind draw the same numbers), otherwise on the CPU. Every
read of one machine therefore sees the same rows, whichever home the placement gives a split.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from probe_lab.data.synthetic import activation_geometry
from probe_lab.data.tables import RowTable

# Rows per drawn block: part of the rows' identity (a block is one draw), so fixed. Small enough that
# a block (and its float32 draw) is a small part of any device's memory.
DRAW_BLOCK_ROWS = 4096


class DrawnTable(RowTable):
    """`n` drawn activation-like rows of width `dim` in `dtype` (see the module docstring); `labels`
    (n,) int64 are drawn at construction, the rows whenever they are read."""

    layers = None

    def __init__(
        self,
        n: int,
        dim: int,
        seed: int,
        *,
        dtype: torch.dtype = torch.float16,
        n_outliers: int = 4,
        outlier_scale: float = 30.0,
        signal: float = 3.0,
    ) -> None:
        self.n_rows, self.dim, self.dtype, self.seed = n, dim, dtype, seed
        mean, scales, direction = activation_geometry(np.random.default_rng(seed), dim, n_outliers, outlier_scale)
        self._geometry = tuple(torch.tensor(v, dtype=torch.float32) for v in (mean, scales, direction))
        rng = np.random.default_rng([seed, n])
        along = rng.standard_normal(n)  # s = z·d of every row
        self.labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-signal * along))).astype(np.int64)
        self._along = torch.from_numpy(along.astype(np.float32))
        self.nonfinite = np.zeros(n, dtype=bool)  # drawn finite: nothing to scan for
        self.blocks_drawn = 0  # blocks drawn by this process so far
        # Each reading thread's last block: reads in storage order smaller than a block draw it once.
        self._last = threading.local()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_last": None}  # a thread-local cannot be pickled

    def __setstate__(self, state: dict) -> None:
        self.__dict__ |= state | {"_last": threading.local()}

    def read(self, rows: np.ndarray, layer: int | None) -> torch.Tensor:
        """The rows drawn where this machine draws them (a GPU's rows stay on it, as a device table's)."""
        return self.read_onto(rows, layer, draw_device())

    def read_onto(self, rows: np.ndarray, layer: int | None, device: torch.device) -> torch.Tensor:
        """The rows (in the order given) as a (k, D) tensor on `device`, drawing only the blocks they
        fall in, each once."""
        rows = np.asarray(rows, dtype=np.int64)
        where = draw_device() if device.type == "cpu" else device
        out = torch.empty((len(rows), self.dim), dtype=self.dtype, device=device)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        blocks = ordered // DRAW_BLOCK_ROWS
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]]) if len(rows) else np.zeros(0, dtype=np.int64)
        for first, stop in zip(starts, np.r_[starts[1:], len(rows)], strict=True):
            block = int(blocks[first])
            drawn = self._draw(block, where)
            offsets = torch.from_numpy(ordered[first:stop] - block * DRAW_BLOCK_ROWS).to(where)
            positions = torch.from_numpy(order[first:stop]).to(device)
            out.index_copy_(0, positions, drawn.index_select(0, offsets).to(device))
        return out

    def _draw(self, block: int, device: torch.device) -> torch.Tensor:
        """Block `block`'s rows (DRAW_BLOCK_ROWS, the last block fewer) in `dtype` on `device`."""
        last = getattr(self._last, "block", None)
        if last is not None and last[:2] == (block, device):
            return last[2]
        drawn = self._drawn(block, device)
        self._last.block = (block, device, drawn)
        return drawn

    def _drawn(self, block: int, device: torch.device) -> torch.Tensor:
        first = block * DRAW_BLOCK_ROWS
        count = min(DRAW_BLOCK_ROWS, self.n_rows - first)
        seed = int(np.random.SeedSequence([self.seed, block]).generate_state(1, dtype=np.uint64)[0] >> 1)
        generator = torch.Generator(device=device).manual_seed(seed)
        mean, scales, direction = (v.to(device) for v in self._geometry)
        g = torch.randn((count, self.dim), generator=generator, device=device)
        along = self._along[first : first + count].to(device)
        z = g.addr_(along - g @ direction, direction)  # g with its component along d replaced by s
        self.blocks_drawn += 1
        return torch.addcmul(mean, z, scales).to(self.dtype)


def draw_device() -> torch.device:
    """Where rows are drawn when the reader asks for them on the host: the current GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
