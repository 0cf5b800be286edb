"""A chunk's texts through the model: length-sorted padded batches, each batch's layers pooled as the
model produces them, and the rows gathered in text order into host buffers (page-locked on a GPU, so
the copies run while the next batch does)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from probe_lab.data.page_locked import page_locked
from probe_lab.extract import model as models
from probe_lab.extract import plan
from probe_lab.extract.capture import LayerCapture, pooling
from probe_lab.settings.extract import ExtractConfig, PaddingSide, Pooling


def chunk_rows(
    capture: LayerCapture,
    model: torch.nn.Module,
    ids: list[list[int]],
    settings: ExtractConfig,
    tokenizer: Any,
    progress: TokenRate,
    buffers: ChunkBuffers,
) -> torch.Tensor:
    """The chunk's rows in text order, (rows, D) for one layer or (rows, L, D), in one of `buffers`:
    each text's rows of a batch are copied from the device straight to their places, asynchronously
    from a GPU (the next batch runs meanwhile); the chunk is complete when this returns."""
    lengths = np.array([len(row) for row in ids])
    per_token = settings.pooling is Pooling.tokens
    counts = plan.rows_per_text(lengths, per_token)
    starts = np.cumsum(counts) - counts
    out: torch.Tensor | None = None
    device = models.input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    for batch in plan.batches(lengths, settings.batch_tokens, settings.max_batch_size):
        inputs, mask = padded_batch([ids[i] for i in batch], pad, settings.model.padding_side, capture.accepts)
        inputs = {name: value.to(device) for name, value in inputs.items()}
        layers = capture.run(pooling(settings.pooling.value, mask), **inputs)
        rows = torch.stack([layer.to(layers[0].device) for layer in layers], dim=1)  # (batch rows, L, D)
        if out is None:
            out = buffers.take((int(counts.sum()), *rows.shape[1:]), rows.dtype)
        offset = 0
        for text in batch:
            out[starts[text] : starts[text] + counts[text]].copy_(
                rows[offset : offset + counts[text]], non_blocking=True
            )
            offset += int(counts[text])
        buffers.used(rows.device)
        # Freed now, not when the next batch is taken: the copies are queued before any later kernel
        # that could reuse the memory, so the next batch's forward pass has it back.
        del rows, layers
        progress.batch_done(len(batch), int(lengths[batch].sum()))
    assert out is not None
    buffers.wait()
    return out[:, 0] if out.shape[1] == 1 else out


def padded_batch(
    ids: list[list[int]], pad: int, side: PaddingSide, accepts: set[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(model inputs, attention mask) of a batch padded on `side`; with left padding the positions of
    each text's tokens are passed as counted from its first token, where the model takes them."""
    longest = max(len(row) for row in ids)
    tokens = torch.full((len(ids), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for i, row in enumerate(ids):
        span = slice(0, len(row)) if side is PaddingSide.right else slice(longest - len(row), longest)
        tokens[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    inputs = {"input_ids": tokens, "attention_mask": mask}
    if side is PaddingSide.left and "position_ids" in accepts:
        inputs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    return inputs, mask


class TokenRate:
    """The extraction's progress: texts done on the counter, tokens per second beside it."""

    def __init__(self, counter: Any, start: float) -> None:
        self.counter, self.start, self.tokens = counter, start, 0

    def batch_done(self, texts: int, tokens: int) -> None:
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.counter.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s", refresh=False)
        self.counter.update(texts)


class ChunkBuffers:
    """The host memory chunks' rows are gathered in: two buffers, taken in turn, so that one is written
    to the store while the next chunk fills the other (the writer is done with a buffer before it is
    taken again). Page-locked when `pinned` (the model runs on a GPU), so that copies into them run
    asynchronously; made once for the largest chunk, since page-locking costs more than the copies,
    and registered in place (`page_locked`: `pin_memory=True` page-locks at a tenth of the speed,
    BENCHMARKS.md). `prepare` makes them on a thread while the model loads: page-locking fresh memory
    faults in every page, a fifth of a second per 512 MB, which would otherwise stall the first chunks."""

    def __init__(self, max_rows: int, pinned: bool) -> None:
        self.max_rows = max_rows
        self.pinned = pinned
        self.slots: list[torch.Tensor | None] = [None, None]
        self.preparing: Future[list[torch.Tensor | None]] | None = None
        self.turn = 0
        self.devices: set[torch.device] = set()

    def prepare(self, row: tuple[int, ...], dtype: torch.dtype, chunks: int) -> None:
        """Start making the buffers `chunks` chunks need (one, or both) for rows shaped `row` of `dtype`;
        `take` waits for them, and raises what failed in making them."""
        if self.max_rows == 0 or chunks == 0:
            return
        count = min(chunks, len(self.slots))

        def make() -> list[torch.Tensor | None]:
            made: list[torch.Tensor | None] = [self._new((self.max_rows, *row), dtype) for _ in range(count)]
            return made + [None] * (len(self.slots) - count)

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe_lab-extract-buffers")
        self.preparing = pool.submit(make)
        pool.shutdown(wait=False)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A (rows, L, D) tensor of `dtype` in the next buffer."""
        if self.preparing is not None:
            self.slots, self.preparing = self.preparing.result(), None
        row = shape[1:]
        slot = self.slots[self.turn]
        if slot is None or slot.dtype != dtype or tuple(slot.shape[1:]) != row or len(slot) < shape[0]:
            slot = self.slots[self.turn] = self._new((max(self.max_rows, shape[0]), *row), dtype)
        self.turn ^= 1
        return slot[: shape[0]]

    def _new(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=dtype)
        return page_locked(buffer) if self.pinned else buffer

    def used(self, device: torch.device) -> None:
        """Rows were copied from `device`: `wait` waits for it."""
        if device.type == "cuda":
            self.devices.add(device)

    def wait(self) -> None:
        """Until every copy queued into the buffers has landed."""
        for device in self.devices:
            torch.cuda.synchronize(device)
        self.devices.clear()
