"""Publishing files all or nothing: a reader sees the old version or the new one, never part of one.

- `atomic_write_bytes(path, data)`: one file, written to a hidden sibling, flushed to disk and
  renamed over `path`.
- `staged_folder(target)`: a folder built in a hidden sibling and renamed into place whole.
- `staged_artifacts(out_dir)`: a run's files staged in a hidden folder inside `out_dir` and moved
  into it on success; the folder outlives a stopped run that can be resumed from it.

Everything is staged in the destination's own folder, so publishing is a rename on one file system.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
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


PARTIAL_LEFTOVER = re.compile(r"\..+\.partial-[0-9a-f]{8}")  # `atomic_write_bytes`'s sibling, by name
STAGING = ".staging"  # a run's files before publishing, and a fit's resume points (`probe_lab.fit.resume`)
RESUME = "resume"  # inside STAGING: never published


@contextmanager
def staged_artifacts(out_dir: Path, *, resumable: bool = False, resume: bool = False) -> Iterator[Path]:
    """Yield a staging folder inside `out_dir`; on a clean exit move its files into `out_dir`, else drop
    them all.

    resumable: the folder has a fixed name (`STAGING`) so that a run that was stopped (killed,
    preempted) can be resumed from what it staged; only the holder of the run folder's lock
    (`probe_lab.locks`) may ask for it. Then `resume=True` keeps what an earlier, unfinished run staged
    there (its fits' checkpoints), where a fresh run starts from an empty folder, and a run that fails
    keeps the folder when it holds a resume point (`RESUME`, never published) for `resume=true` to go
    on from. Otherwise the folder has a name of its own, so that writers of one folder never share it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if resumable:
        staging = out_dir / STAGING
        if not resume:
            shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(exist_ok=True)
    else:
        staging = _hidden_sibling(out_dir / "staging", "run")
        staging.mkdir()
    published = False
    try:
        yield staging
        shutil.rmtree(staging / RESUME, ignore_errors=True)
        # SIGTERM waits until every file is in place: a stop never leaves half a run published.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            for item in sorted(staging.iterdir()):
                target = out_dir / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                item.replace(target)
            published = True
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    finally:
        if published or not resumable or not any((staging / RESUME).rglob("*.ckpt")):
            shutil.rmtree(staging, ignore_errors=True)


def out_of_space(err: BaseException) -> bool:
    """Whether `err` (or what it was raised from) is a write that found the disk or the quota full:
    an OSError, or an error of a library writing through its own I/O (safetensors' says "os error 28")."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")


def is_partial_leftover(name: str) -> bool:
    """Whether `name` is a file an atomic write left behind when its process was killed mid-write: never
    part of anything complete, so safe to remove."""
    return PARTIAL_LEFTOVER.fullmatch(name) is not None


def _hidden_sibling(path: Path, role: str) -> Path:
    """A new name next to `path` (same file system, so moving it into place is a rename)."""
    return path.parent / f".{path.name}.{role}-{uuid.uuid4().hex[:8]}"
