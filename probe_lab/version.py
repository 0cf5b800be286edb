"""The installed probe_lab's version, as `--version` prints it."""

from __future__ import annotations

from importlib import metadata


def version_line(app: str) -> str:
    """`<app> <version>`, e.g. "probe_lab.convert 0.1.0"."""
    return f"{app} {metadata.version('probe-lab')}"
