"""A store's manifest (`Manifest`, `ShardInfo`), how it is read and checked, and the store's file names."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe_lab.data.tables import DTYPES
from probe_lab.errors import ProbeLabError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.npy"
# Optional: per row, the sample it came from and its token position (-1 for a pooled row), int64 (N, 2).
SAMPLES = "samples.npy"
# An extraction's record of its complete shards while it runs (probe_lab.extract); gone once complete.
JOURNAL = "extraction.json"
# The one tensor of a shard, and its dtype names in the safetensors header.
TENSOR_NAME = "activations"
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def shard_name(index: int) -> str:
    """The file name of a store's shard number `index` (from 0)."""
    return f"shard-{index:05d}.safetensors"


def is_store_file(name: str) -> bool:
    """Whether a file of this name is one a store writer makes (the only files overwriting deletes)."""
    # `.manifest.json.partial…`: a manifest being written (probe_lab.artifacts.atomic_write_bytes), or a journal.
    return (
        name in (MANIFEST, LABELS, SAMPLES, JOURNAL)
        or name.startswith((f".{MANIFEST}.partial", f".{JOURNAL}.partial"))
        or (name.startswith("shard-") and name.endswith(".safetensors"))
    )


@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows: int
    sha256: str  # of the tensor bytes


@dataclass(frozen=True)
class Manifest:
    format_version: int
    dim: int
    layers: int | None
    dtype: str
    rows: int
    labels: str
    labels_sha256: str  # of the labels file
    shards: tuple[ShardInfo, ...]
    samples: str | None = None  # SAMPLES, when the rows record where they came from
    samples_sha256: str | None = None
    provenance: dict[str, Any] | None = None  # how the activations were made (model, layers, dataset, ...)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (self.dim,) if self.layers is None else (self.layers, self.dim)

    @property
    def nbytes(self) -> int:
        return self.rows * int(np.prod(self.row_shape)) * self.torch_dtype.itemsize

    def to_json(self) -> str:
        values = asdict(self)
        values["shards"] = [asdict(shard) for shard in self.shards]
        for optional in ("samples", "samples_sha256", "provenance"):
            if values[optional] is None:
                del values[optional]
        return json.dumps(values, indent=1) + "\n"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """The manifest at `path`, or a one-line error naming the file and what is wrong with it."""
        try:
            values = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ProbeLabError(f"{path}: not a readable manifest ({str(err).splitlines()[0]})") from None
        try:
            manifest = cls(
                format_version=_field(values, "format_version", int),
                dim=_field(values, "dim", int),
                layers=_field(values, "layers", int, optional=True),
                dtype=_field(values, "dtype", str),
                rows=_field(values, "rows", int),
                labels=_field(values, "labels", str),
                labels_sha256=_field(values, "labels_sha256", str),
                shards=tuple(
                    ShardInfo(_field(s, "file", str), _field(s, "rows", int), _field(s, "sha256", str))
                    for s in _field(values, "shards", list)
                ),
                samples=_field(values, "samples", str, optional=True),
                samples_sha256=_field(values, "samples_sha256", str, optional=True),
                provenance=_field(values, "provenance", dict, optional=True),
            )
        except (TypeError, AttributeError) as err:
            raise ProbeLabError(f"{path}: malformed manifest ({err})") from None
        manifest._check(path)
        return manifest

    def _check(self, path: Path) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ProbeLabError(f"{path}: format_version {self.format_version} is not supported ({FORMAT_VERSION})")
        if self.dtype not in DTYPES:
            raise ProbeLabError(f"{path}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.dim < 1 or (self.layers is not None and self.layers < 1) or not self.shards:
            raise ProbeLabError(f"{path}: malformed manifest (dim, layers and shards must be positive)")
        held = sum(shard.rows for shard in self.shards)
        if held != self.rows:
            raise ProbeLabError(f"{path}: its shards hold {held} rows, not the {self.rows} it lists")
        if (self.samples is None) != (self.samples_sha256 is None):
            raise ProbeLabError(f"{path}: malformed manifest (samples and samples_sha256 go together)")
        for name in [self.labels, *([self.samples] if self.samples else []), *(shard.file for shard in self.shards)]:
            if Path(name).name != name:
                raise ProbeLabError(f"{path}: {name!r} must be a plain file name inside the store")


def _field(values: Any, key: str, kind: type, *, optional: bool = False) -> Any:
    value = values.get(key) if isinstance(values, dict) else None
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{key!r} missing or not a {kind.__name__}")
    return value
