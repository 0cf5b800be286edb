"""Host-to-device copies (probe_lab.data.h2d), on the CPU: the chunking, the order of reads and copies,
and the store scan's copy onto a device, with a stand-in for CUDA whose copies finish as late as CUDA
allows (when the buffer is waited on again, or at the end). tests/test_gpu.py runs the real copies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from probe_lab.data import h2d
from probe_lab.data.h2d import chunk_ranges, copy_to_device, fill_in_chunks, rows_view
from probe_lab.errors import ProbeLabError
from probe_lab.store import ActivationStore, scan


class LateCopier:
    """A ChunkCopier whose copies happen only when the buffer is asked for again, or at `finish`.

    It fails when a buffer is handed out again before the chunk read into it was sent: then two
    reads would share one buffer.
    """

    def __init__(self, out: torch.Tensor, buffers: list[torch.Tensor], stream: object = None) -> None:
        self.out, self.buffers, self.slots = out, list(buffers), len(buffers)
        self.pending: dict[int, tuple[int, int]] = {}
        self.handed_out: set[int] = set()
        self.log: list[tuple[str, int, int]] = []
        self.finished = False
        self._lock = threading.Lock()

    def buffer(self, slot: int, count: int) -> torch.Tensor:
        with self._lock:
            assert slot not in self.handed_out, f"buffer {slot} handed out twice before its chunk was sent"
            self._complete(slot)
            self.handed_out.add(slot)
            self.log.append(("buffer", slot, count))
        return rows_view(self.buffers[slot], count, self.out)

    def send(self, slot: int, start: int, stop: int) -> None:
        with self._lock:
            assert slot in self.handed_out and slot not in self.pending
            self.handed_out.remove(slot)
            self.pending[slot] = (start, stop)
            self.log.append(("send", slot, start))

    def finish(self) -> None:
        with self._lock:
            for slot in list(self.pending):
                self._complete(slot)
            self.finished = True

    def _complete(self, slot: int) -> None:
        if slot in self.pending:
            start, stop = self.pending.pop(slot)
            self.out[start:stop] = rows_view(self.buffers[slot], stop - start, self.out)


def byte_buffers(slots: int, nbytes: int) -> list[torch.Tensor]:
    return [torch.full((nbytes,), 0xFF, dtype=torch.uint8) for _ in range(slots)]


def copier_for(out: torch.Tensor, slots: int, chunk_rows: int) -> LateCopier:
    return LateCopier(out, byte_buffers(slots, chunk_rows * out[0].numel() * out.element_size()))


def reader_of(source: torch.Tensor, delay: float = 0.0):
    rng = np.random.default_rng(0)
    delays = iter(rng.uniform(0, delay, size=len(source)))

    def read(rows: torch.Tensor, start: int, stop: int) -> None:
        time.sleep(next(delays))  # reads in threads finish out of order
        rows.copy_(source[start:stop])

    return read


def test_chunks_cover_the_rows_in_order() -> None:
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(8, 4) == [(0, 4), (4, 8)]
    assert chunk_ranges(3, 10) == [(0, 3)]
    assert chunk_ranges(0, 4) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_buffer_is_viewed_as_rows_of_the_destination(dtype: torch.dtype) -> None:
    buffer = torch.zeros(200, dtype=torch.uint8)
    like = torch.empty((9, 3, 4), dtype=dtype)
    rows = rows_view(buffer, 2, like)
    assert rows.shape == (2, 3, 4) and rows.dtype == dtype
    rows.copy_(torch.arange(24, dtype=torch.float32).reshape(2, 3, 4))
    used = 24 * like.element_size()
    assert torch.equal(buffer[:used], rows.reshape(-1).view(torch.uint8))
    assert not buffer[used:].any()  # a view of the front of the buffer, nothing beyond


def test_reading_in_this_thread_sends_each_chunk_as_soon_as_it_is_read() -> None:
    source = torch.randn(50, 6)
    out = torch.full_like(source, float("nan"))
    copier = copier_for(out, 2, 7)
    fill_in_chunks(copier, chunk_ranges(50, 7), reader_of(source), threads=0)
    assert copier.finished and torch.equal(out, source)
    expected = []
    for index, (start, stop) in enumerate(chunk_ranges(50, 7)):
        expected += [("buffer", index % 2, stop - start), ("send", index % 2, start)]
    assert copier.log == expected


@pytest.mark.parametrize(("slots", "chunk_rows"), [(1, 5), (3, 7), (4, 50), (4, 1)])
def test_reads_in_threads_fill_every_row_and_send_in_order(slots: int, chunk_rows: int) -> None:
    source = torch.randn(50, 6).to(torch.bfloat16)
    out = torch.zeros_like(source)
    copier = copier_for(out, slots, chunk_rows)
    fill_in_chunks(copier, chunk_ranges(50, chunk_rows), reader_of(source, delay=0.002), threads=slots)
    assert copier.finished and torch.equal(out, source)
    sent = [start for kind, _, start in copier.log if kind == "send"]
    assert sent == [start for start, _ in chunk_ranges(50, chunk_rows)]


@pytest.mark.parametrize("threads", [0, 2])
def test_a_failed_read_still_waits_for_the_copies_in_flight(threads: int) -> None:
    source = torch.randn(40, 3)
    out = torch.zeros_like(source)
    copier = copier_for(out, 2, 5)
    read = reader_of(source)

    def failing(rows: torch.Tensor, start: int, stop: int) -> None:
        if start == 20:
            raise ProbeLabError("disk gone")
        read(rows, start, stop)

    with pytest.raises(ProbeLabError, match="disk gone"):
        fill_in_chunks(copier, chunk_ranges(40, 5), failing, threads=threads)
    assert copier.finished and not copier.pending
    assert torch.equal(out[:20], source[:20])  # what was read before the failure landed


@pytest.fixture
def late_copies(monkeypatch: pytest.MonkeyPatch) -> list[LateCopier]:
    """copy_to_device and the store scan on the CPU: LateCopier for CUDA, unpinned buffers."""
    made: list[LateCopier] = []

    def copier(out: torch.Tensor, buffers: list[torch.Tensor], stream: object = None) -> LateCopier:
        made.append(LateCopier(out, buffers, stream))
        return made[-1]

    monkeypatch.setattr(h2d, "PinnedCopier", copier)
    monkeypatch.setattr(h2d, "pinned_buffers", byte_buffers)
    monkeypatch.setattr(scan, "pinned_buffers", byte_buffers)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: None)
    return made


def test_copy_to_device_uses_at_most_one_buffer_per_chunk(late_copies: list[LateCopier]) -> None:
    source = torch.randn(12, 4)
    out = torch.zeros_like(source)
    copy_to_device(out, reader_of(source), chunk_rows=5, slots=4, threads=4)
    assert torch.equal(out, source)
    assert late_copies[0].slots == 3  # three chunks
    copy_to_device(torch.zeros(0, 4), reader_of(source), chunk_rows=5, slots=4)
    assert len(late_copies) == 1  # nothing to copy: no buffers, no copier


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_a_scan_onto_a_device_receives_every_row_as_it_reads(
    tmp_path: Path, late_copies: list[LateCopier], monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    monkeypatch.setattr(scan, "SCAN_READ_BYTES_TO_DEVICE", 1000)  # several chunks a shard, both buffers
    x = torch.randn(600, 32)
    x[17, 3] = float("nan")
    with ActivationStore.create(tmp_path / "s", 32, dtype=dtype, shard_mb=0.01) as writer:
        writer.append(x, np.arange(600) % 2)
    store = ActivationStore.open(tmp_path / "s")
    into = torch.zeros((600, 32), dtype=store.dtype)
    mask = store.scan(into=into)
    bits = {torch.float32: torch.int32}.get(store.dtype, torch.int16)  # compare patterns: NaN equals nothing
    assert torch.equal(into.view(bits), x.to(store.dtype).view(bits))
    np.testing.assert_array_equal(mask, store.scan())
    assert np.flatnonzero(mask).tolist() == [17]
    assert len(late_copies) == len(store.manifest.shards) and all(c.finished for c in late_copies)
    assert {copier.slots for copier in late_copies} == {2}


def test_a_corrupt_shard_fails_the_scan_onto_a_device_with_no_copy_left(
    tmp_path: Path, late_copies: list[LateCopier]
) -> None:
    with ActivationStore.create(tmp_path / "s", 8, shard_mb=0.001) as writer:
        writer.append(torch.randn(300, 8), np.arange(300) % 2)
    shard = tmp_path / "s" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = ActivationStore.open(tmp_path / "s")
    with pytest.raises(ProbeLabError, match=f"{shard}: checksum mismatch"):
        store.scan(into=torch.zeros((300, 8), dtype=torch.float16))
    assert late_copies and all(copier.finished and not copier.pending for copier in late_copies)
