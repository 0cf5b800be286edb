"""The run's log file: what each stage of a run did, as it happens, so that a run that fails half-way
leaves a record of how far it got (and `error.txt` says why).

`RUN_LOG` lines go to the log file only (Hydra's `<run folder>/<job name>.log`, configured by
conf/hydra/job_logging/probe_lab.yaml); the terminal shows the summary printed at the end of the run
instead, which `print_summary` writes into the log file too. In a data-parallel fit only the first
process logs (`LeaderOnly`): the others' records go nowhere, and their log file is never created.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from probe_lab.settings.parallel import follower_process

RUN_LOG = logging.getLogger("probe_lab.run_log")


class FileOnly(logging.Filter):
    """A handler filter that keeps `RUN_LOG`'s records off the handler it is set on (the console)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != RUN_LOG.name


class LeaderOnly(logging.Filter):
    """A handler filter that drops every record in the processes of a data-parallel fit other than
    the first (`follower_process`)."""

    def __init__(self) -> None:
        super().__init__()
        self.follower = follower_process()

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.follower


def print_summary(lines: Iterable[str]) -> None:
    """Print a run's summary to stdout as one block and write it into the run's log file."""
    lines = list(lines)
    print_block(lines)
    for line in lines:
        RUN_LOG.info(line)


def print_block(lines: Iterable[str]) -> None:
    """Print the lines to stdout and flush, so that the block is out before anything that follows."""
    for line in lines:
        print(line)
    sys.stdout.flush()
