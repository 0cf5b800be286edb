"""Fuzzed inputs: every malformed file probe_lab reads is refused with a ProbeLabError, never another
exception, and never by running a pickle's code.

Each test mutates one kind of file — a store's manifest, shard and labels, an .npy array, a
per-sample tensor file, a labels file, a probe file — and reads it the way a run does. A mutation that
leaves the file valid may be read; anything else must raise ProbeLabError. Example counts are bounded
(`FUZZ`) so the whole file runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from probe_lab.data.sources import load_dataset, read_labels
from probe_lab.data.tensor_files import load_tensor_file
from probe_lab.errors import ProbeLabError
from probe_lab.probe import ProbeWeights, load_probe, save_probe
from probe_lab.settings.data import NpyData, StoreData
from probe_lab.store import LABELS, MANIFEST, ActivationStore

pytestmark = pytest.mark.fuzz
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MARKER = "probe_lab_fuzz_pickle_ran"


@contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="probe_lab-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def refused_or_read(read: Callable[[], object]) -> None:
    """`read()` either succeeds or raises ProbeLabError with a one-line message."""
    try:
        read()
    except ProbeLabError as err:
        assert "\n" not in str(err).strip(), str(err)


def read_store(path: Path) -> None:
    """Open a store, verify every checksum and read every row, as a run on it does."""
    load_dataset(StoreData(path=str(path)), 0).to_tensor()


@pytest.fixture(scope="module")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "store"
    x = torch.randn(90, 6)
    with ActivationStore.create(path, 6, dtype="float16", shard_mb=0.0005) as writer:
        writer.append(x, np.arange(90) % 2)
    assert len(ActivationStore.open(path).manifest.shards) >= 3
    return path


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


@st.composite
def manifest_mutations(draw: st.DrawFn) -> Callable[[dict], object]:
    """A change to a manifest's JSON: a field (or a shard's field) replaced, removed, or the whole
    document replaced by another JSON value."""
    kind = draw(st.sampled_from(["replace", "remove", "shard", "whole"]))
    keys = ["format_version", "dim", "layers", "dtype", "rows", "labels", "labels_sha256", "shards"]
    key = draw(st.sampled_from(keys))
    value = draw(json_values)
    shard_key = draw(st.sampled_from(["file", "rows", "sha256"]))

    def mutate(manifest: dict) -> object:
        if kind == "replace":
            manifest[key] = value
        elif kind == "remove":
            manifest.pop(key, None)
        elif kind == "shard":
            manifest["shards"][0][shard_key] = value
        else:
            return value
        return manifest

    return mutate


@FUZZ
@given(mutation=manifest_mutations())
def test_mutated_manifests_are_refused(store_template: Path, mutation: Callable[[dict], object]) -> None:
    with scratch() as folder:
        store = shutil.copytree(store_template, folder / "store")
        manifest = json.loads((store / MANIFEST).read_text())
        (store / MANIFEST).write_text(json.dumps(mutation(manifest)))
        refused_or_read(lambda: read_store(store))


@FUZZ
@given(
    shard=st.integers(0, 2),
    damage=st.sampled_from(["truncate", "flip", "header_length"]),
    where=st.floats(0, 1),
    value=st.integers(0, 2**64 - 1),
)
def test_damaged_shards_are_refused(store_template: Path, shard: int, damage: str, where: float, value: int) -> None:
    with scratch() as folder:
        store = shutil.copytree(store_template, folder / "store")
        path = store / ActivationStore.open(store).manifest.shards[shard].file
        data = bytearray(path.read_bytes())
        header_end = 8 + int.from_bytes(data[:8], "little")
        if damage == "truncate":
            data = data[: int(where * (len(data) - 1))]
        elif damage == "flip":
            position = int(where * (len(data) - 1))
            data[position] ^= 1 + value % 255
        else:
            assume(value != header_end - 8)  # the length it has: no damage
            data[:8] = value.to_bytes(8, "little")
        path.write_bytes(bytes(data))
        if damage == "flip" and position < header_end:
            refused_or_read(lambda: read_store(store))  # e.g. a space of the header's padding became a tab
        else:
            with pytest.raises(ProbeLabError):  # a shorter file, a wrong length, a changed row: never read
                read_store(store)


@FUZZ
@given(contents=st.binary(max_size=200) | st.sampled_from([b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00\xff\xff"]))
def test_damaged_store_labels_are_refused(store_template: Path, contents: bytes) -> None:
    with scratch() as folder:
        store = shutil.copytree(store_template, folder / "store")
        (store / LABELS).write_bytes(contents)
        with pytest.raises(ProbeLabError):
            read_store(store)


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    """An .npy file with its header or data damaged."""
    array = np.arange(24, dtype=np.float32).reshape(4, 6)
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = bytearray(buffer.getvalue())
    kind = draw(st.sampled_from(["truncate", "header_text", "flip"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "header_text":
        header = draw(
            st.sampled_from(
                [
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (-4, 6), }",
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (400000000000, 6), }",
                    "{'descr': '|O', 'fortran_order': False, 'shape': (4, 6), }",
                    "{'descr': '<i8', 'fortran_order': False, 'shape': (4, 6), }",
                    "{'descr': '<f4', 'fortran_order': True, 'shape': (4, 6, 1, 1), }",
                    "{'descr': '<f4', 'shape': (4, 6), }",
                    "__import__('os').system('touch " + MARKER + "')",
                ]
            )
        )
        text = header.encode().ljust(118) + b"\n"
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + bytes(data[128:])
    position = draw(st.integers(0, 127))
    data[position] ^= draw(st.integers(1, 255))
    return bytes(data)


@FUZZ
@given(contents=npy_files())
def test_damaged_npy_files_are_refused(contents: bytes) -> None:
    with scratch() as folder:
        path = folder / "x.npy"
        path.write_bytes(contents)

        labels = folder / "y.txt"
        labels.write_text("0\n1\n0\n1\n")
        refused_or_read(lambda: load_dataset(NpyData(x=str(path), y=str(labels)), 0).to_tensor())
        assert not (folder / MARKER).exists()


class _Runs:
    """An object whose unpickling would run code (it creates the marker file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.folder / MARKER,))


@st.composite
def tensor_files(draw: st.DrawFn, folder: Path) -> bytes:
    """Bytes of a per-sample file that is not a plain tensor file."""
    kind = draw(st.sampled_from(["random", "pickle", "zip", "damaged", "int", "dict"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "pickle":
        return pickle.dumps(_Runs(folder))
    if kind == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name in draw(st.lists(st.sampled_from(["data.pkl", "archive/data.pkl", "x", "version"]), max_size=3)):
                archive.writestr(
                    name, draw(st.binary(max_size=40)) if name != "data.pkl" else pickle.dumps(_Runs(folder))
                )
        return buffer.getvalue()
    buffer = io.BytesIO()
    value = {"int": torch.arange(6), "dict": {"x": torch.randn(6)}}.get(kind, torch.randn(6))
    torch.save(value, buffer)
    data = bytearray(buffer.getvalue())
    if kind == "damaged":
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return bytes(data)


@FUZZ
@given(data=st.data())
def test_per_sample_files_that_are_not_plain_tensors_are_refused_unpickled(data: st.DataObject) -> None:
    with scratch() as folder:
        path = folder / "sample_0.pt"
        path.write_bytes(data.draw(tensor_files(folder)))
        refused_or_read(lambda: load_tensor_file(path))
        assert not (folder / MARKER).exists(), "a pickle's code ran"


label_lines = st.sampled_from(["0", "1", "", " ", "2", "-1", "0.5", "1.0", "nan", "NaN", "inf", "yes", "0,1", "\t1"])


@FUZZ
@given(lines=st.lists(label_lines, max_size=12), raw=st.binary(max_size=30), use_raw=st.booleans())
def test_labels_files_are_0_1_lines_or_refused(lines: list[str], raw: bytes, use_raw: bool) -> None:
    with scratch() as folder:
        path = folder / "labels.txt"
        path.write_bytes(raw if use_raw else "\n".join(lines).encode())
        try:
            labels = read_labels(str(path), "data.labels_path", True)
        except ProbeLabError:
            return
        assert labels is not None and set(np.unique(labels)) <= {0, 1}


@st.composite
def probe_files(draw: st.DrawFn) -> bytes:
    """A probe.safetensors with a wrong shape, dtype, tensor or metadata."""
    weight = np.ones(
        draw(st.sampled_from([(4,), (4, 1), (2, 2), (0,)])), dtype=draw(st.sampled_from(["f4", "f2", "i4"]))
    )
    tensors = {"weight": weight, "bias": np.ones(draw(st.sampled_from([(1,), (2,), ()])), dtype=np.float32)}
    if draw(st.booleans()):
        tensors.pop(draw(st.sampled_from(["weight", "bias"])))
    header = draw(
        st.sampled_from(
            ['{"format_version": 1, "input_dim": 4}', '{"format_version": 99}', "not json", '{"input_dim": "4"}', "[]"]
        )
    )
    data = bytearray(save(tensors, metadata={"probe_lab": header}))
    if draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return bytes(data)


@FUZZ
@given(contents=probe_files())
def test_damaged_probe_files_are_refused(contents: bytes) -> None:
    with scratch() as folder:
        path = folder / "probe.safetensors"
        path.write_bytes(contents)

        def read() -> None:
            probe, _ = load_probe(path)
            probe.decision_function(np.ones((3, 4), dtype=np.float32))

        refused_or_read(read)


def test_a_valid_probe_file_is_read(tmp_path: Path) -> None:
    """The control of the probe fuzzing: the file probe_lab writes is read back."""
    save_probe(tmp_path / "probe.safetensors", ProbeWeights(np.arange(4, dtype=np.float32), 0.5))
    probe, _ = load_probe(tmp_path / "probe.safetensors")
    np.testing.assert_array_equal(probe.weight, np.arange(4))
