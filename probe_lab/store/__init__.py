"""The activation store: activations larger than RAM as contiguous, memory-mappable shards.

A store is a directory:

    manifest.json            format_version, dim, layers, dtype, rows, labels (file, checksum) and
                             shards (file, rows, checksum); written last
    labels.npy               int8 0/1, one per row
    samples.npy              optional, int64 (rows, 2): each row's sample index and token position (−1:
                             a pooled row), for stores an extraction wrote; the manifest also records
                             its provenance (model, layers, pooling, dataset checksum, ...)
    extraction.json          only while an extraction runs: its settings' identity and complete shards
    shard-00000.safetensors  one tensor "activations" of shape (rows, D) or (rows, L, D)
    ...

Shards are ordinary safetensors files (any safetensors reader opens them), in float16, bfloat16 or
float32: the stored precision is kept end to end. Each shard's checksum is the SHA-256 of its tensor
bytes; the labels file's is of the whole file. The manifest is written last and atomically, so a
store whose writing was interrupted has no manifest and is never taken for complete.

`ActivationStore.create(path, dim, layers=None, dtype="float16")` returns a `StoreWriter` that appends
batches as they are produced (`.append(x, y)`, `.close()`), holding one batch in memory at a time.
`ActivationStore.open(path)` checks the manifest against the shards (presence, header, size) without
reading them; `scan()` then reads everything once, verifying checksums and finding non-finite rows.

Modules: `manifest` (the manifest and the store's file names), `writer` (`StoreWriter`), `reader`
(`ActivationStore`, `ShardedTable`), `scan` (the one-pass scan, optionally onto a GPU).
"""

from probe_lab.store.manifest import FORMAT_VERSION, LABELS, MANIFEST, Manifest, ShardInfo
from probe_lab.store.reader import ActivationStore, ShardedTable
from probe_lab.store.writer import StoreWriter

__all__ = [
    "FORMAT_VERSION",
    "LABELS",
    "MANIFEST",
    "ActivationStore",
    "Manifest",
    "ShardInfo",
    "ShardedTable",
    "StoreWriter",
]
