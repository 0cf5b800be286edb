"""The Hydra callback that summarizes a multirun when it ends (hydra.callbacks in conf/config.yaml).

Each job records its own outcome in its folder (see `probe_lab.report.sweep.job`), so the summary does not
depend on where the jobs ran: launchers such as joblib or submitit run them in other processes or on other
machines. When the sweep ends, `SweepSummary` reads every job folder into a row, writes summary.csv,
summary.md, sweep.png (and parity.json for backend pairs) into the sweep folder, prints the summary and
exits non-zero if any job failed.

Hydra instantiates this callback at every start-up, single runs included, so what reads and renders the
jobs (torch, for the probes of backend pairs; matplotlib, for sweep.png) is imported only when a sweep
ends: a single run's settings are checked before torch is imported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from probe_lab.report.run_log import print_block
from probe_lab.report.sweep.job import FAILED, PARITY_FILE, JobRow, error_line
from probe_lab.settings.parallel import follower_process


class SweepSummary(Callback):
    """Summarizes a multirun when it ends.

    It exits with status 1 when a job failed (or the summary could not be written), 0 otherwise. Hydra turns
    an exception from a callback into a warning, so this is done by raising SystemExit, which it lets through.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if follower_process():  # the first process of a data-parallel sweep summarizes it
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        output_subdir = config.hydra.output_subdir
        if output_subdir is None:
            print(
                "probe_lab: no sweep summary: it reads the overrides Hydra saves (hydra.output_subdir)", file=sys.stderr
            )
            return
        from probe_lab.report.sweep.collect import backend_pairs, collect_rows
        from probe_lab.report.sweep.render import terminal_lines

        rows = collect_rows(sweep_dir, str(output_subdir))
        written = True
        pairs: list[dict[str, Any]] = []
        try:
            pairs = backend_pairs(rows, sweep_dir)
            write_summary(sweep_dir, rows, pairs)
        except Exception as err:  # the jobs' outcomes still get printed, and the exit status still tells
            print(f"probe_lab: error: could not write the sweep summary: {error_line(err)}", file=sys.stderr)
            written = False
        print_block(terminal_lines(rows, sweep_dir, written, pairs))
        if not written or any(row.status == FAILED for row in rows):
            raise SystemExit(1)


def write_summary(sweep_dir: Path, rows: list[JobRow], pairs: list[dict[str, Any]] | None = None) -> None:
    """summary.csv, summary.md and sweep.png into the sweep folder, and parity.json for backend pairs."""
    from probe_lab.report.plots import plot_sweep
    from probe_lab.report.sweep.render import SUMMARY_FILES, write_csv, write_markdown

    csv_name, md_name, png_name = SUMMARY_FILES
    write_csv(sweep_dir / csv_name, rows)
    write_markdown(sweep_dir / md_name, rows, sweep_dir, pairs or [])
    plot_sweep(sweep_dir / png_name, rows)
    if pairs:
        (sweep_dir / PARITY_FILE).write_text(json.dumps(pairs, indent=2) + "\n")
