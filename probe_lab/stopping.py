"""SIGTERM — what SLURM and most schedulers send before they stop or preempt a job — ends a run with
one line and a non-zero exit (143, as a shell reports a process ended by SIGTERM), after the fit
being trained has saved its resume point.

During a Lightning fit, Lightning's own handler takes the signal (it calls the one installed here
too): the batch being trained finishes, the fit's checkpoint is saved (`probe_lab.fit.resume`), and
Lightning raises `SIGTERMException`. Anywhere else the handler installed here raises `Stopped` at
once. Either way the block of `sigterm_stops_the_run` ends in `Stopped`, whatever the signal made the
code below it raise, so a caller tells a stopped run from a failed one by the exception's type.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from probe_lab.artifacts import RESUME, STAGING

EXIT_CODE = 128 + signal.SIGTERM


class Stopped(Exception):
    """SIGTERM arrived outside a Lightning fit."""


_received = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = True
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # no Lightning fit holds the signal now
        raise Stopped("stopped by SIGTERM")


@contextmanager
def sigterm_stops_the_run() -> Iterator[None]:
    """While the block runs, SIGTERM stops the run as the module says, raising `Stopped` out of the block
    (in the main thread: a signal handler can be set only there, so a job run in another thread keeps
    the process's handler)."""
    global _received
    _received = False
    if threading.current_thread() is not threading.main_thread():  # a job run in a thread: no handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    except BaseException as err:  # Lightning's SIGTERMException, or what a stop made fail
        if _received and not isinstance(err, Stopped):
            raise Stopped("stopped by SIGTERM") from err
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_line(out_dir: Path) -> str:
    """What a run stopped by SIGTERM says: whether it can be resumed, and from where (a run of every
    layer stages each layer's run in a folder of its own)."""
    points = sorted({path.parent.parent for path in out_dir.glob(f"**/{STAGING}/{RESUME}/*/*.ckpt")})
    if points:
        return (
            f"stopped by SIGTERM; the fit's checkpoint is kept in {points[0]}: "
            "run the same command with resume=true to go on from it"
        )
    return "stopped by SIGTERM before any checkpoint was saved: run the same command again"
