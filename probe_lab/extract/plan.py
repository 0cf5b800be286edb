"""How an extraction walks its texts: chunks of a few shards each, and length-sorted batches within a chunk.

A chunk is a run of consecutive texts whose rows fill at most CHUNK_SHARDS shards (a single text with
more rows than that is a chunk of its own). Its rows are written in text order, and its last shard is
ended with the chunk: an interrupted extraction resumes at the first chunk whose shards are missing,
and the plan — a function of the token counts and the settings alone — is the same when the command
runs again. A chunk spans several shards so that sorting its texts by length leaves little padding
even when every token is a row (a 256 MB shard of 8192-wide rows holds only ~60 texts of 256 tokens).

A chunk is written while the next one runs through the model, so the first chunk's pass is not
overlapped by any writing, and the last chunk's writing by no pass. The chunks therefore ramp: the
first holds one shard, the next two, then CHUNK_SHARDS each, and towards the end each holds at most
half of the rows still to come, down to one shard.
Within a chunk, texts are sorted by length and cut into batches of at most `batch_tokens` tokens,
padding included, and `max_batch_size` texts, so little compute goes to padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The plan's version, part of an extraction's identity: a journal written under another plan is refused
# with that said, rather than resumed into a store laid out differently from a fresh one.
PLAN_VERSION = 2
CHUNK_SHARDS = 4  # shards of rows one chunk holds at most: the window texts are sorted by length in


@dataclass(frozen=True)
class Chunk:
    first: int  # the chunk's texts are first..stop-1
    stop: int
    rows: int


def rows_per_text(lengths: np.ndarray, per_token: bool) -> np.ndarray:
    """Rows each text gives: its token count when every token is a row, else one."""
    return lengths.astype(np.int64) if per_token else np.ones(len(lengths), dtype=np.int64)


def chunks(rows: np.ndarray, shard_rows: int) -> list[Chunk]:
    """Consecutive texts grouped into chunks of whole texts (at least one each) whose rows fit the
    ramp of the module docstring: 1, 2, then CHUNK_SHARDS shards of `shard_rows`, and at most half of
    the rows left (one shard at least) towards the end."""
    out: list[Chunk] = []
    counts = rows.tolist()
    left = int(rows.sum())
    first = 0
    while first < len(counts):
        shards = min(CHUNK_SHARDS, 2 ** min(len(out), 8), max(1, left // 2 // shard_rows))
        limit, held, stop = shards * shard_rows, 0, first
        while stop < len(counts) and (stop == first or held + counts[stop] <= limit):
            held += counts[stop]
            stop += 1
        out.append(Chunk(first, stop, held))
        first, left = stop, left - held
    return out


def batches(lengths: np.ndarray, batch_tokens: int, max_batch_size: int) -> list[np.ndarray]:
    """Indices into `lengths`, longest texts first, cut so that each batch's size × its longest length
    stays within `batch_tokens` (one text at least) and its size within `max_batch_size`."""
    order = np.argsort(-lengths, kind="stable")
    out: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(1, int(lengths[order[start]]))
        size = max(1, min(max_batch_size, batch_tokens // longest))
        out.append(order[start : start + size])
        start += size
    return out


def sample_positions(lengths: np.ndarray, per_token: bool) -> np.ndarray:
    """int64 (rows, 2): each row's text index and token position (−1 for a text's one pooled row)."""
    texts = np.arange(len(lengths), dtype=np.int64)
    if not per_token:
        return np.stack([texts, np.full(len(lengths), -1, dtype=np.int64)], axis=1)
    counts = lengths.astype(np.int64)
    text_of_row = np.repeat(texts, counts)
    starts = np.cumsum(counts) - counts
    positions = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    return np.stack([text_of_row, positions], axis=1)
