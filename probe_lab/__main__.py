"""`python -m probe_lab [overrides]`: compose the config with Hydra and train one probe.

With `-m` (Hydra multirun) it trains one probe per combination of the swept values; a job that fails is
recorded in its folder and the sweep goes on, and `probe_lab.report.sweep.callback.SweepSummary` summarizes them all.
A single run that fails leaves its error line (and, for an unexpected exception, the traceback) in
error.txt of its run folder, and how far it got in the run's log. A run stopped by SIGTERM exits 143
with one line saying how to resume it (`probe_lab.stopping`, `resume=true`).

In a data-parallel fit (`trainer.devices=N`, launched by Lightning, `torchrun` or SLURM) every process
runs this app; only the first writes its run folder, logs and prints a summary. The others train their
shard, write nothing (Hydra's output subfolder is off for them; under torchrun, where the launcher
does not pass the first process's run folder, their run folder is the working directory, and stays
untouched) and print only their error line if they fail.
"""

from __future__ import annotations

import math
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from probe_lab import stopping
from probe_lab.artifacts import atomic_write_bytes
from probe_lab.cli_help import answer_help_or_version, training_help
from probe_lab.errors import ProbeLabError
from probe_lab.locks import writing
from probe_lab.report.run_log import RUN_LOG
from probe_lab.report.sweep.job import ERROR_FILE, error_line, record_failure, start_job
from probe_lab.settings.parallel import follower_process
from probe_lab.settings.schema import RunConfig, register_configs, to_settings
from probe_lab.stopping import Stopped, sigterm_stops_the_run

register_configs()


def main() -> None:
    """`python -m probe_lab` and the `probe-lab` console script: --help and --version answered here,
    everything else composed and run by Hydra."""
    if not answer_help_or_version(sys.argv[1:], "probe_lab", training_help):
        if follower_process():
            sys.argv += follower_overrides(sys.argv[1:])
        hydra_main()


def follower_overrides(args: list[str]) -> list[str]:
    """Hydra overrides that keep a data-parallel fit's process other than the first from writing into
    a run folder: no output subfolder (.hydra/), and the working directory as its run folder unless its
    launcher gave it one (Lightning's launcher passes the first process's)."""
    given = {arg.partition("=")[0].lstrip("+") for arg in args}
    wanted = {"hydra.output_subdir": "null", "hydra.run.dir": "."}
    return [f"{key}={value}" for key, value in wanted.items() if key not in given]


@hydra.main(version_base=None, config_path="pkg://probe_lab.conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """Returns the validation AUROC, for Hydra sweepers that optimize it (NaN for a failed job of a sweep)."""
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return sweep_job(cfg, out_dir, hydra_cfg.output_subdir)
    follower = follower_process()  # writes nothing, so takes no folder
    folder = None if follower else RunFolder(out_dir, hydra_cfg.output_subdir)
    if folder is not None and not folder.claim():
        sys.exit(2)
    try:
        if not follower:
            (out_dir / ERROR_FILE).unlink(missing_ok=True)  # an earlier run's, in a folder given again
        settings = to_settings(cfg, RunConfig)  # checked before torch, sklearn and matplotlib are imported
        from probe_lab.run import run

        with sigterm_stops_the_run():
            result = run(cfg, out_dir, settings=settings)
    except Stopped:
        report_stop(out_dir, None, record=not follower)
        sys.exit(stopping.EXIT_CODE)
    except Exception as err:
        report_failure(out_dir, err, None, record=not follower)
        if isinstance(err, ProbeLabError):
            sys.exit(2)
        raise  # a bug, not bad input: Hydra reports it with its traceback
    finally:
        if folder is not None:
            folder.release()
    return result.val_auroc


class RunFolder:
    """A run folder held by this process while it runs (`probe_lab.locks`), so that a second command
    aimed at a folder another one is filling is refused with one line and writes none of probe_lab's
    files there. Hydra records a job's config in its output subfolder before any of probe_lab's code
    runs, so a refused command has already rewritten that record: the holder puts its own back when
    it releases the folder."""

    def __init__(self, out_dir: Path, hydra_subdir: str | None) -> None:
        self.out_dir = out_dir
        self.record = out_dir / hydra_subdir if hydra_subdir else None
        self.lock = writing(out_dir, "run folder")
        self.kept: dict[Path, bytes] = {}

    def claim(self) -> bool:
        """Take the folder, or print why not (another process holds it) and return False."""
        try:
            self.lock.__enter__()
        except ProbeLabError as err:
            print(f"probe_lab: error: {err}", file=sys.stderr)
            return False
        if self.record is not None and self.record.is_dir():
            self.kept = {path: path.read_bytes() for path in self.record.glob("*.yaml")}
        return True

    def release(self) -> None:
        for path, data in self.kept.items():
            if not path.is_file() or path.read_bytes() != data:
                atomic_write_bytes(path, data)
        self.lock.__exit__(None, None, None)


def sweep_job(cfg: DictConfig, out_dir: Path, hydra_subdir: str | None = None) -> float:
    """One job of a multirun. A failure is printed and written to the job's error.txt instead of raised:
    an exception or sys.exit here would stop the sweep before the other jobs run and before its summary.
    """
    from probe_lab.run import run

    follower = follower_process()  # a SLURM task of a data-parallel job other than the first
    folder = None if follower else RunFolder(out_dir, hydra_subdir)
    if folder is not None and not folder.claim():
        return math.nan
    try:
        job_id = None if follower else start_job(out_dir)
        try:
            with sigterm_stops_the_run():
                result = run(cfg, out_dir, job_id)
        except Stopped:
            report_stop(out_dir, job_id, record=not follower)
            if runs_the_whole_sweep():  # the signal was meant for the sweep: it ends here
                sys.exit(stopping.EXIT_CODE)
            return math.nan  # a worker's job was stopped; the sweep's other jobs go on
        except Exception as err:
            report_failure(out_dir, err, job_id, record=not follower)
            return math.nan
    finally:
        if folder is not None:
            folder.release()
    return result.val_auroc


def runs_the_whole_sweep() -> bool:
    """Whether this process runs every job of the sweep (Hydra's basic launcher), rather than being one
    of a launcher's workers (joblib) or a job of its own (SLURM)."""
    return str(HydraConfig.get().launcher.get("_target_", "")).endswith(".BasicLauncher")


def report_stop(out_dir: Path, job_id: str | None, *, record: bool = True) -> None:
    """A run or sweep job stopped by SIGTERM: one line saying whether it can be resumed."""
    line = stopping.stopped_line(out_dir)
    print(f"probe_lab: error: {line}", file=sys.stderr)
    RUN_LOG.error(line)
    if record:
        record_failure(out_dir, line, "", job_id)


def report_failure(out_dir: Path, err: Exception, job_id: str | None, *, record: bool = True) -> None:
    """A failed run or sweep job: its error line on stderr and in its log, and (with `record`) error.txt
    in its folder, with the traceback when the error is not bad input."""
    line = error_line(err)
    print(f"probe_lab: error: {line}", file=sys.stderr)
    bad_input = isinstance(err, ProbeLabError)
    RUN_LOG.error(line, exc_info=None if bad_input else err)
    if record:
        record_failure(out_dir, line, "" if bad_input else traceback.format_exc(), job_id)


if __name__ == "__main__":
    main()
