"""Progress of a fit, a store's scan and a conversion: bars on a terminal, plain lines anywhere else.

- `on_terminal()` is the one place that decides. It is true when both stdout and stderr are terminals:
  Lightning's TQDM bar writes to stdout and tqdm's bars to stderr, so a bar reaches a terminal only then.
- On a terminal nothing changes: `progress_counter` returns a tqdm bar, and a fit's
  `probe_lab.fit.progress_bar.lightning_progress_bar` Lightning's `TQDMProgressBar`.
- Anywhere else (a log file, a pipe, a sweep's job, CI) no carriage return is written: `PlainProgress`
  (a scan, a conversion) and a fit's `PlainProgressBar` write `PeriodicLines` to stderr, at most one every
  `interval_s` seconds while the work runs and one when it ends (none when it ends in an error), e.g.
  `scan store: 1.20GB of 4.00GB (30%)  (30 s)` and `epoch 3/2000  step 120  val_auroc 0.9132  (12 s)`.

This module does not import Lightning (a scan or a conversion would wait seconds for it); the fit's bar,
a Lightning callback, lives in `probe_lab.fit.progress_bar`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from tqdm.auto import tqdm

Clock = Callable[[], float]
INTERVAL_S = 30.0


def on_terminal() -> bool:
    """Whether progress may be drawn as bars: stdout and stderr are both terminals, or this is a Jupyter
    kernel (whose streams are not terminals, but which draws tqdm's and Lightning's bars as widgets)."""
    return "ipykernel" in sys.modules or (sys.stdout.isatty() and sys.stderr.isatty())


def progress_counter(total: int, *, desc: str, unit: str, unit_scale: bool = False, enabled: bool = True) -> Progress:
    """A counter of `total` units to `update(n)` and close (or use in `with`): a tqdm bar on a terminal,
    `PlainProgress` lines otherwise; when not `enabled`, a disabled tqdm bar (it shows nothing)."""
    if not enabled or on_terminal():
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=not enabled)
    return PlainProgress(total, desc=desc, unit=unit, unit_scale=unit_scale)


class PeriodicLines:
    """Lines on `stream` (stderr when None, looked up at each write), each followed by the time since
    `start()`, and a clock that says when the next periodic line is due."""

    def __init__(self, interval_s: float, clock: Clock = time.monotonic, stream: TextIO | None = None) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.stream = stream
        self.start()

    def start(self) -> None:
        self.started = self.last_written = self.clock()

    def due(self) -> bool:
        return self.clock() - self.last_written >= self.interval_s

    def write(self, text: str) -> None:
        now = self.clock()
        stream = self.stream or sys.stderr
        stream.write(f"{text}  ({_duration(now - self.started)})\n")
        stream.flush()
        self.last_written = now


class PlainProgress:
    """tqdm's counting interface (`update`, `close`, `with`) as lines `desc: done of total (percent)  (elapsed)`:
    at most one every `interval_s` seconds while counting, and one on `close()` or the end of the `with`
    block (none when the block raises). Safe to update from several threads. `clock` and `stream` are for
    tests. (tqdm itself cannot write such lines: it redraws its bar after a carriage return, whatever the
    file, and `disable=None` off a terminal shows nothing at all.)"""

    interval_s: float = INTERVAL_S

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        unit: str,
        unit_scale: bool = False,
        interval_s: float | None = None,
        clock: Clock = time.monotonic,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = 0
        self.postfix = ""
        self.closed = False
        self.lines = PeriodicLines(self.interval_s if interval_s is None else interval_s, clock, stream)
        self._lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            if not self.closed and self.lines.due():
                self.lines.write(self._status())

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """tqdm's: text shown after the count (a rate of another unit), from the next line on."""
        del refresh  # lines are written when due, whatever the caller asks
        self.postfix = text

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self.lines.write(self._status())

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # the error's own message is the line to read
            self.closed = True

    def _status(self) -> str:
        done = self._amount(self.n) if self.unit_scale else str(self.n)
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} of {self._amount(self.total)}{percent}{postfix}"

    def _amount(self, value: float) -> str:
        """Counted units, scaled as tqdm's own bars scale them (1.20GB) with `unit_scale`."""
        return tqdm.format_sizeof(value, self.unit, 1000) if self.unit_scale else f"{value} {self.unit}"


Progress = tqdm | PlainProgress


def _duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 2 h 03 min."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
