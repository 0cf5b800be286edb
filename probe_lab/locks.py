"""One writer at a time: `writing(path, what)` holds an exclusive lock on what a process writes.

A store being written (`probe_lab.convert`, `probe_lab.extract`) and a run folder being filled
(`python -m probe_lab`) are each held under a lock while they are written, so that a second process
aiming at the same path refuses at once with one line instead of replacing or mixing into the first
one's files. The lock is an advisory `fcntl.flock` on a hidden file beside the path
(`.<name>.lock`), taken without waiting. The operating system releases it when its process ends,
however it ends (a SIGKILL included), so a killed writer never leaves a stale lock behind (only an
empty, unlocked file, which the next writer takes). A writer that finishes removes the file while
it still holds the lock; a writer that locked the file just as it was removed sees that the name no
longer leads to the file it holds, and refuses as if it had found the lock held.

`flock` locks are per open file description and are honoured across processes of one machine and,
on most network file systems (NFS v4, Lustre with flock enabled), across machines.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from probe_lab.errors import ProbeLabError


def lock_file(path: Path) -> Path:
    """The lock file of `path`: a hidden sibling, so it is neither part of a store nor of a run folder."""
    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}.lock"


@contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Hold `path`'s lock for the block, or refuse with a ProbeLabError naming `path` and `what` it is
    when another process holds it."""
    lock = lock_file(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    busy = ProbeLabError(
        f"{path}: another process is writing this {what} now; wait for it to finish or choose another path"
    )
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise busy from None
            raise
        if not _names(lock, descriptor):  # removed by a writer that finished meanwhile
            raise busy
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # while still held: no one can have locked it meanwhile
    finally:
        os.close(descriptor)  # releases the lock


def _names(lock: Path, descriptor: int) -> bool:
    """Whether the name `lock` still leads to the open file `descriptor`."""
    try:
        named = os.stat(lock)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
