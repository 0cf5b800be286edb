"""One extraction: texts through the model into an activation store, chunk by chunk, resumable.

`extract(settings)` checks everything it can before the model loads (the texts, the layers against
the model's depth, the output against an unfinished extraction there), then runs the plan
(`probe_lab.extract.plan`): each chunk's texts through the model (`probe_lab.extract.forward`), the
chunk's rows written in text order as its own shards (side by side) by a writer thread while the next
chunk runs through the model, then flushed and listed in the journal (`probe_lab.extract.journal`:
the settings' identity and the shards complete so far) by a flusher thread.
A run that stops — an error, Ctrl-C, a killed process — leaves its complete shards and the
journal; the same command then continues after them, and a command with another model, dataset or
settings is refused (`overwrite=true` starts afresh). The manifest is written last, so an unfinished
store is never read as complete.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe_lab.errors import ProbeLabError
from probe_lab.extract import journal, plan
from probe_lab.extract import model as models
from probe_lab.extract.capture import LayerCapture, resolve_layers
from probe_lab.extract.forward import ChunkBuffers, TokenRate, chunk_rows
from probe_lab.extract.texts import read_texts
from probe_lab.locks import writing
from probe_lab.report.progress import progress_counter
from probe_lab.settings.extract import CHAT_TEMPLATE, ExtractConfig, Pooling
from probe_lab.store.manifest import ShardInfo
from probe_lab.store.writer import StoreWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractionSummary:
    output: Path
    texts: int
    rows: int
    layers: list[int]
    dim: int
    dtype: str
    gigabytes: float
    tokens: int
    truncated: int
    seconds: float  # the whole extraction, the model's loading included
    loop_seconds: float  # running the texts through the model and writing their rows
    write_seconds: float  # writing, hashing and flushing the shards, in threads beside the model's work
    resumed_shards: int

    def line(self) -> str:
        rate = self.tokens / self.loop_seconds if self.loop_seconds > 0 else float("inf")
        layers = ",".join(map(str, self.layers))
        return (
            f"extracted {self.texts} texts ({self.tokens} tokens, {self.truncated} cut to max_length) → "
            f"{self.rows} rows × layers [{layers}] × {self.dim} {self.dtype}, {self.gigabytes:.3f} GB in "
            f"{self.seconds:.1f} s ({rate:,.0f} tokens/s through the model) → {self.output}"
            + (f" (resumed after {self.resumed_shards} complete shards)" if self.resumed_shards else "")
        )


def extract(settings: ExtractConfig) -> ExtractionSummary:
    """Run `settings`' extraction into `settings.output`, which is locked meanwhile (`probe_lab.locks`:
    a second extraction into it refuses); see the module docstring."""
    with writing(Path(settings.output), "store"):
        return _extract(settings)


def _extract(settings: ExtractConfig) -> ExtractionSummary:
    start = time.perf_counter()
    output = Path(settings.output)
    source = models.locate(settings.model)
    config = models.load_config(source)
    depth = models.depth(config)
    layers = resolve_layers(settings.layers, depth)
    tokenizer = models.load_tokenizer(source)
    texts = read_texts(settings.dataset, chat=_chat_template(tokenizer, settings))
    ids, truncated = _tokenized(tokenizer, texts.texts, settings)
    lengths = np.array([len(row) for row in ids], dtype=np.int64)
    if (lengths == 0).any():
        raise ProbeLabError(f"dataset.path ({settings.dataset.path}): row {int(np.argmin(lengths))} has no tokens")
    dim = models.hidden_size(config)
    per_token = settings.pooling is Pooling.tokens
    rows = plan.rows_per_text(lengths, per_token)
    row_bytes = len(layers) * dim * getattr(torch, settings.model.dtype.value).itemsize
    shard_rows = max(1, int(settings.shard_mb * 2**20) // row_bytes)
    chunks = plan.chunks(rows, shard_rows)
    identity = journal.extraction_identity(settings, source, texts.sha256, layers)
    placement = models.ModelPlacement.of(settings.model)  # refuses a model.device that is not there
    kept, resuming = journal.resumable(output, identity, settings.overwrite)
    done = journal.chunks_done(kept, chunks)
    labels_per_row = np.repeat(texts.labels, rows)
    first_rows = np.cumsum(rows) - rows  # each text's first row in the store
    kept_rows = sum(shard.rows for shard in kept)
    writer = StoreWriter(
        output,
        dim,
        len(layers) if len(layers) > 1 else None,
        settings.model.dtype.value,
        shard_mb=settings.shard_mb,
        overwrite=settings.overwrite or resuming,  # an unfinished extraction of no complete shard restarts
        kept=kept,
        kept_labels=labels_per_row[:kept_rows],
    )
    journal.write_journal(output, identity, writer.shards)
    todo = chunks[done:]
    buffers = ChunkBuffers(max((chunk.rows for chunk in todo), default=0), pinned=placement.on_gpu)
    todo_tokens = int(lengths[todo[0].first :].sum()) if todo else 0

    def write(x: torch.Tensor, chunk: plan.Chunk) -> tuple[tuple[float, float], Future]:
        """The chunk's shards written and hashed (its buffer is free again when this returns), then
        handed to the flusher; returns when it was busy and the flusher's future."""
        started = time.perf_counter()
        first = int(first_rows[chunk.first])
        shards = writer.append_shards(x, labels_per_row[first : first + chunk.rows], durable=False)
        listed = writer.shards
        return (started, time.perf_counter()), flusher.submit(flush, shards, listed)

    flush_failed: list[BaseException] = []

    def flush(shards: tuple[ShardInfo, ...], listed: tuple[ShardInfo, ...]) -> tuple[float, float]:
        """The chunk's shards flushed to the disk, then the journal that lists them; nothing after a
        flush failed, so no journal can list shards an earlier chunk's failure left unflushed."""
        if flush_failed:
            raise flush_failed[0]
        started = time.perf_counter()
        try:
            writer.make_durable(shards)
            journal.write_journal(output, identity, listed)
        except BaseException as failure:
            flush_failed.append(failure)
            raise
        return started, time.perf_counter()

    # Two threads beside the model's: the writer writes and hashes a chunk's shards while the next
    # chunk runs through the model (at most two chunks held), and the flusher flushes them to the
    # disk and lists them in the journal while the writer goes on with the next chunk, so the disk
    # is busy all along. Each takes the chunks in order, so the journal always lists a prefix of them.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe_lab-extract-writer")
    flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe_lab-extract-flusher")
    pending: Future[tuple[tuple[float, float], Future]] | None = None
    flushing: list[Future[tuple[float, float]]] = []
    busy: list[tuple[float, float]] = []  # when the writer or the flusher was at work

    def handed_over() -> None:
        """The pending chunk written and its flush queued; a failed flush so far raised."""
        span, flushed = pending.result()
        busy.append(span)
        flushing.append(flushed)
        for future in flushing:
            if future.done() and future.exception() is not None:
                raise future.exception()

    buffers.prepare((len(layers), dim), getattr(torch, settings.model.dtype.value), len(todo))  # while the model loads
    try:
        model = models.load_model(source, settings.model, placement)
        with (
            LayerCapture(model, layers, depth) as capture,
            progress_counter(
                len(lengths) - todo[0].first if todo else 0,
                desc="extract",
                unit="text",
                enabled=settings.progress,
            ) as counter,
            torch.inference_mode(),
        ):
            looping = time.perf_counter()
            progress = TokenRate(counter, looping)
            for chunk in todo:
                x = chunk_rows(capture, model, ids[chunk.first : chunk.stop], settings, tokenizer, progress, buffers)
                if pending is not None:
                    handed_over()
                pending = pool.submit(write, x, chunk)
            if pending is not None:
                handed_over()
            busy.extend(future.result() for future in flushing)
            looped = time.perf_counter() - looping
    except BaseException:
        # the shards being written are finished or removed, and flushed and listed or not, never left
        # half-listed
        if pending is not None:
            wait([pending])
            if pending.exception() is None:
                flushing.append(pending.result()[1])
        wait(flushing)
        writer.interrupt()
        raise
    finally:
        pool.shutdown(wait=True)
        flusher.shutdown(wait=True)
    provenance = identity | {"tokens": int(lengths.sum()), "truncated": truncated, "texts": len(ids)}
    manifest = writer.close(samples=plan.sample_positions(lengths, per_token), provenance=provenance)
    return ExtractionSummary(
        output=output,
        texts=len(ids),
        rows=manifest.rows,
        layers=layers,
        dim=dim,
        dtype=manifest.dtype,
        gigabytes=manifest.nbytes / 1e9,
        tokens=todo_tokens,
        truncated=truncated,
        seconds=time.perf_counter() - start,
        loop_seconds=looped,
        write_seconds=covered_seconds(busy),
        resumed_shards=len(kept),
    )


def covered_seconds(spans: list[tuple[float, float]]) -> float:
    """The seconds covered by at least one of the (start, end) spans."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def _tokenized(tokenizer: Any, texts: list[str], settings: ExtractConfig) -> tuple[list[list[int]], int]:
    """Token ids per text (special tokens as the tokenizer adds them, unless a chat template did),
    cut to dataset.max_length; and how many texts were cut."""
    special = settings.dataset.template != CHAT_TEMPLATE
    ids = tokenizer(texts, add_special_tokens=special)["input_ids"]
    limit = settings.dataset.max_length
    truncated = sum(len(row) > limit for row in ids)
    if truncated:
        log.warning(
            "%d of %d texts are longer than dataset.max_length=%d tokens and were cut", truncated, len(ids), limit
        )
    return [list(row[:limit]) for row in ids], truncated


def _chat_template(tokenizer: Any, settings: ExtractConfig) -> Any:
    if settings.dataset.template != CHAT_TEMPLATE or not getattr(tokenizer, "chat_template", None):
        return None

    def apply(text: str) -> str:
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return apply
