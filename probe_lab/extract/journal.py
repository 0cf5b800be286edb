"""An extraction's journal (`extraction.json`): what makes two extractions the same, and the shards
complete so far, so that an interrupted extraction resumes after them and one with other settings is
refused. Replaced atomically after each chunk; removed when the manifest is written."""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from probe_lab.artifacts import atomic_write_bytes
from probe_lab.errors import ProbeLabError
from probe_lab.extract import model as models
from probe_lab.extract import plan
from probe_lab.settings.extract import ExtractConfig
from probe_lab.store.manifest import JOURNAL, MANIFEST, ShardInfo


def extraction_identity(
    settings: ExtractConfig, source: models.ModelSource, dataset_sha256: str, layers: list[int]
) -> dict:
    """What makes two extractions the same: recorded in the journal and, with counts, the manifest."""
    dataset = asdict(settings.dataset) | {"sha256": dataset_sha256}
    return {
        "model": source.identity()
        | {"dtype": settings.model.dtype.value, "padding_side": settings.model.padding_side.value},
        "dataset": {key: str(value) if isinstance(value, Path) else value for key, value in dataset.items()},
        "layers": layers,
        "pooling": settings.pooling.value,
        "batch_tokens": settings.batch_tokens,
        "max_batch_size": settings.max_batch_size,
        "shard_mb": settings.shard_mb,
        "plan": plan.PLAN_VERSION,
        "probe_lab": metadata.version("probe-lab"),
    }


def resumable(output: Path, identity: dict, overwrite: bool) -> tuple[list[ShardInfo], bool]:
    """(the complete shards of an unfinished extraction at `output` with the same identity, whether
    there is one); ([], False) when there is none, or with `overwrite`. Refuses one with another
    identity."""
    journal = output / JOURNAL
    if overwrite or not journal.is_file() or (output / MANIFEST).is_file():
        return [], False  # nothing to resume (a complete store is refused by the writer unless overwrite)
    try:
        recorded = json.loads(journal.read_text())
        kept = [ShardInfo(**shard) for shard in recorded["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ProbeLabError(f"{journal}: unreadable ({err}); overwrite=true starts afresh") from None
    if recorded.get("identity") != identity:
        differs = [key for key in identity if recorded.get("identity", {}).get(key) != identity[key]]
        raise ProbeLabError(
            f"output ({output}): an unfinished extraction with another {', '.join(differs) or 'setup'}; "
            "run it with its own settings to resume it, or overwrite=true to start afresh"
        )
    for shard in kept:
        if not (output / shard.file).is_file():
            raise ProbeLabError(f"{output / shard.file}: listed in {JOURNAL} but missing; overwrite=true starts afresh")
    return kept, True


def chunks_done(kept: list[ShardInfo], chunks: list[plan.Chunk]) -> int:
    """How many chunks the kept shards hold (each chunk ends a shard; a long text may fill several)."""
    held, done, total = sum(shard.rows for shard in kept), 0, 0
    for chunk in chunks:
        if total + chunk.rows > held:
            break
        total += chunk.rows
        done += 1
    if total != held:
        raise ProbeLabError(f"{JOURNAL}: its shards end inside a chunk of this plan; overwrite=true starts afresh")
    return done


def write_journal(output: Path, identity: dict, shards: tuple[ShardInfo, ...]) -> None:
    record = {"identity": identity, "shards": [asdict(shard) for shard in shards]}
    atomic_write_bytes(output / JOURNAL, (json.dumps(record, indent=1) + "\n").encode())
