"""Publishing files all or nothing: a reader sees the old version or the new one, never part of one.

- `atomic_write_bytes(path, data)`: one file, written to a hidden sibling, flushed to disk and
  renamed over `path`.
- `staged_folder(target)`: a folder built in a hidden sibling and renamed into place whole.
- `staged_artifacts(out_dir)`: a run's files staged in a hidden folder inside `out_dir` and moved
  into it on success.

Everything is staged in the destination's own folder, so publishing is a rename on one file system.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `path` atomically: into a new hidden sibling, fsynced, then renamed over `path`.

    mode: the file's permission bits (default: those of any new file, the umask applied). On failure
    the sibling is removed and `path` is left as it was.
    """
    partial = _hidden_sibling(path, "partial")
    try:
        with open(partial, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if mode is not None:
            os.chmod(partial, mode)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Yield a new empty hidden folder next to `target`; on a clean exit it replaces `target` whole.

    An existing `target` is set aside first and removed once the new folder is in place. On an
    exception the staged folder is removed and `target` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(target, "partial")
    staging.mkdir()
    try:
        yield staging
        old = None
        if target.exists():
            old = _hidden_sibling(target, "old")
            old.mkdir()
            target.replace(old / target.name)
        staging.replace(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staged_artifacts(out_dir: Path) -> Iterator[Path]:
    """Yield a staging folder; on a clean exit move its files into `out_dir`, else drop them all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staging-"))
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            target = out_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")


def _hidden_sibling(path: Path, role: str) -> Path:
    """A new name next to `path` (same file system, so moving it into place is a rename)."""
    return path.parent / f".{path.name}.{role}-{uuid.uuid4().hex[:8]}"
