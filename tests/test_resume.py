"""Killed and resumed: a streamed AdamW run stopped mid-training (SIGKILL, or SIGTERM as SLURM sends
before a preemption) and started again with the same command plus resume=true ends with the probe an
uninterrupted run ends with, bit for bit (same seed, the same batches in the same order, on the CPU).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, CliResult, run_here, run_module
from test_faults import without_timings

from probe_lab.convert import main as convert_main
from probe_lab.data.synthetic import activation_like
from probe_lab.stopping import Stopped, sigterm_stops_the_run

pytestmark = pytest.mark.faults

BATCHES_PER_EPOCH = 15  # 3600 training rows in batches of 256


def streamed_adamw(store: Path) -> tuple[str, ...]:
    return (
        "progress_bar=false",
        "backend=pytorch",
        "device=cpu",
        "data=store",
        f"data.path={store}",
        "probe.optimizer=adamw",
        "probe.batch_size=256",
        "probe.max_iterations=10",
        "probe.learning_rate=0.01",
        "probe.early_stopping_patience=3",
        "seed=3",
    )


def signal_at(epoch: int, batch: int, signum: int, once: Path) -> tuple[str, ...]:
    """The callback that signals this run once, after `batch` of `epoch` (tests/signal_callback.py)."""
    return (
        "+callbacks.stop._target_=signal_callback.SignalAt",
        f"+callbacks.stop.epoch={epoch}",
        f"+callbacks.stop.batch={batch}",
        f"+callbacks.stop.signal={int(signum)}",
        f"+callbacks.stop.once={once}",
    )


def run(*overrides: str, run_dir: Path, env: dict[str, str] | None = None) -> CliResult:
    return run_module("probe_lab", *overrides, run_dir=run_dir, env={"PYTHONPATH": str(REPO / "tests"), **(env or {})})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of 6,000 × 32 float32 rows in small shards: its training split (3600 rows) streams in 15
    batches an epoch."""
    folder = tmp_path_factory.mktemp("resume")
    x, y = activation_like(6000, 32, seed=2)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    args = [str(folder / "x.npy"), str(folder / "store"), "--labels", str(folder / "y.npy")]
    assert convert_main([*args, "--dtype", "float32", "--shard-mb", "0.1", "--no-progress"]) == 0
    return folder / "store"


@pytest.fixture(scope="module")
def uninterrupted_runs(store: Path, tmp_path_factory: pytest.TempPathFactory):
    """uninterrupted_runs(*extra) is the run of `streamed_adamw` with `extra` settings, run once: the
    reference the stopped and resumed command lines are compared with, trained in this process
    (`run_here`, the same run as `python -m probe_lab` makes of these settings)."""
    done: dict[tuple[str, ...], CliResult] = {}

    def whole(*extra: str) -> CliResult:
        if extra not in done:
            settings = [s for s in streamed_adamw(store) if s != "progress_bar=false"]  # run_here sets it
            result = run_here(*settings, *extra, run_dir=tmp_path_factory.mktemp("whole") / "run")
            assert result.metrics()["fit"]["epochs"] >= 5  # long enough that the stops below land mid-training
            done[extra] = result
        return done[extra]

    return whole


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_runs) -> CliResult:
    return uninterrupted_runs(*ACCUMULATING_SHORT)


def same_run(resumed: CliResult, uninterrupted: CliResult) -> None:
    assert resumed.returncode == 0, resumed.stderr
    probe = (resumed.run_dir / "probe.safetensors").read_bytes()
    assert probe == (uninterrupted.run_dir / "probe.safetensors").read_bytes()
    assert without_timings(resumed.metrics()) == without_timings(uninterrupted.metrics())
    assert not (resumed.run_dir / ".staging").exists() and not (resumed.run_dir / "resume").exists()


EXTRA = pytest.mark.faults_extra
# Gradients accumulated over 2 batches, epochs cut to 10 batches and validated every other epoch: an
# optimizer step is not every batch, and an epoch's end is not where its stream ends.
ACCUMULATING_SHORT = (
    "probe.gradient_accumulation_steps=2",
    "+trainer.limit_train_batches=10",
    "trainer.check_val_every_n_epoch=2",
)


@pytest.mark.parametrize(
    ("signum", "epoch", "batch", "extra", "requeued"),
    [
        # killed: from the end of epoch 2 (not validated), epoch 3 is trained again; SLURM requeues the run
        pytest.param(signal.SIGKILL, 3, 5, ACCUMULATING_SHORT, True, id="sigkill-requeued"),
        # from the checkpoint saved at the signal, right after an optimizer step (8 batches, 2 a step)
        pytest.param(signal.SIGTERM, 2, 7, ACCUMULATING_SHORT, False, id="sigterm-after-a-step"),
        # after an epoch's last batch, before its end: from the epoch before
        pytest.param(signal.SIGTERM, 1, 9, ACCUMULATING_SHORT, False, id="sigterm-after-the-last-batch"),
        # mid-way through an accumulation window: the gradients gathered so far are in no checkpoint
        pytest.param(signal.SIGTERM, 2, 6, ACCUMULATING_SHORT, False, id="sigterm-mid-window", marks=EXTRA),
        pytest.param(signal.SIGTERM, 2, 6, (), False, id="sigterm-mid-epoch", marks=EXTRA),
        pytest.param(signal.SIGTERM, 1, BATCHES_PER_EPOCH - 1, (), False, id="sigterm-last-batch", marks=EXTRA),
        pytest.param(signal.SIGKILL, 3, 5, (), False, id="sigkill-mid-epoch", marks=EXTRA),
    ],
)
def test_a_stopped_run_resumed_ends_with_the_uninterrupted_probe(
    store: Path,
    uninterrupted_runs,
    tmp_path: Path,
    signum: signal.Signals,
    epoch: int,
    batch: int,
    extra: tuple[str, ...],
    requeued: bool,
) -> None:
    uninterrupted = uninterrupted_runs(*extra)
    command = (*streamed_adamw(store), *extra, *signal_at(epoch, batch, signum, tmp_path / "signalled"))
    stopped = run(*command, run_dir=tmp_path / "run")
    assert stopped.returncode == (143 if signum == signal.SIGTERM else -signal.SIGKILL), stopped.stderr
    assert (tmp_path / "signalled").exists()
    assert not (stopped.run_dir / "probe.safetensors").exists()  # nothing published
    assert list((stopped.run_dir / ".staging" / "resume").rglob("last.ckpt"))
    if signum == signal.SIGTERM:
        line = stopped.stderr.strip().splitlines()[-1]
        assert line.startswith("probe_lab: error: stopped by SIGTERM; the fit's checkpoint is kept in ")
        assert line.endswith("run the same command with resume=true to go on from it")
        assert "stopped by SIGTERM" in (stopped.run_dir / "error.txt").read_text()

    if requeued:  # SLURM's requeued job runs the same command: it resumes without resume=true
        resumed = run(*command, run_dir=tmp_path / "run", env={"SLURM_RESTART_COUNT": "1"})
    else:
        resumed = run(*command, "resume=true", run_dir=tmp_path / "run")
    same_run(resumed, uninterrupted)
    assert "resuming fit 1 from" in (resumed.run_dir / "probe_lab.log").read_text()
    assert not (resumed.run_dir / "error.txt").exists()
    logs = resumed.run_dir / "logs"
    assert (logs / "metrics.csv").is_file() and (logs / "metrics.stopped-1.csv").is_file()


def test_resuming_with_other_settings_is_refused_and_a_fresh_run_starts_afresh(
    store: Path, uninterrupted: CliResult, tmp_path: Path
) -> None:
    command = (*streamed_adamw(store), *ACCUMULATING_SHORT, *signal_at(1, 3, signal.SIGTERM, tmp_path / "signalled"))
    assert run(*command, run_dir=tmp_path / "run").returncode == 143
    refused = run(*command, "probe.learning_rate=0.02", "resume=true", run_dir=tmp_path / "run")
    assert refused.returncode == 2
    line = refused.stderr.strip()
    assert "\n" not in line, line
    assert "resume=true: the stopped run in" in line and "probe.learning_rate: 0.01 → 0.02" in line
    assert list((tmp_path / "run" / ".staging" / "resume").rglob("last.ckpt"))  # still there to resume
    assert not (tmp_path / "run" / "probe.safetensors").exists()

    again = run(*command, run_dir=tmp_path / "run")  # no resume=true: the checkpoint is not used
    same_run(again, uninterrupted)
    assert "resuming fit" not in (again.run_dir / "probe_lab.log").read_text()


def test_resume_with_nothing_to_resume_starts_from_the_beginning(
    store: Path, uninterrupted: CliResult, tmp_path: Path
) -> None:
    """A run killed before its first checkpoint, of other settings, leaves staged files behind: a run with
    resume=true finds nothing to resume and starts afresh, publishing none of them."""
    other = (*streamed_adamw(store), "probe.learning_rate=0.05")
    assert run(*other, *signal_at(0, 2, signal.SIGKILL, tmp_path / "k"), run_dir=tmp_path / "run").returncode == -9
    assert (tmp_path / "run" / ".staging" / "logs").is_dir()  # what the killed run staged
    resumed = run(*streamed_adamw(store), *ACCUMULATING_SHORT, "resume=true", run_dir=tmp_path / "run")
    same_run(resumed, uninterrupted)
    assert "holds no stopped run to resume; starting from the beginning" in resumed.stdout
    assert sorted(p.name for p in (resumed.run_dir / "logs").iterdir()) == ["metrics.csv"]
    checkpoints = sorted(p.name for p in (resumed.run_dir / "checkpoints").iterdir())
    assert checkpoints == sorted(p.name for p in (uninterrupted.run_dir / "checkpoints").iterdir())


def test_the_python_api_never_resumes_unasked(tmp_path: Path) -> None:
    """Only a run of the command line keeps and uses resume points: a trainer given a run_dir that holds
    one (here an unreadable one) fits from the start."""
    from probe_lab.backends.pytorch import TorchProbeTrainer
    from probe_lab.data.dataset import ActivationDataset
    from probe_lab.settings import ProbeTrainingConfig

    stale = tmp_path / "run" / "resume" / "fit-1"
    stale.mkdir(parents=True)
    (stale / "last.ckpt").write_bytes(b"not a checkpoint")
    x, y = activation_like(600, 8, seed=1)
    config = ProbeTrainingConfig(device="cpu", optimizer="adamw", max_iterations=3, batch_size=128)
    trainer = TorchProbeTrainer(8, config, run_dir=tmp_path / "run")
    trainer.fit_datasets(ActivationDataset(x[:400], y[:400]), ActivationDataset(x[400:], y[400:]))
    assert trainer.fit_details["epochs"] >= 1
    assert (stale / "last.ckpt").read_bytes() == b"not a checkpoint"


def test_sigterm_outside_a_fit_stops_the_run_at_once() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped, match="stopped by SIGTERM"), sigterm_stops_the_run():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # interrupted by the handler
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handler is gone with the run


def test_sigterm_in_a_thread_leaves_the_process_handler_alone() -> None:
    """A job run in a thread (joblib's threading backend) cannot set signal handlers; it runs without."""
    import threading

    outcome: list[BaseException | None] = []

    def job() -> None:
        try:
            with sigterm_stops_the_run():
                pass
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert outcome == [None]


def test_a_checkpoint_whose_write_fails_leaves_the_one_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import torch

    from probe_lab import artifacts
    from probe_lab.fit.resume import AtomicCheckpointIO

    path = tmp_path / "resume" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1, "weight": torch.ones(3)}, path)

    def full_disk(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2, "weight": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_stopped_run_of_every_layer_names_the_layer_to_resume(tmp_path: Path) -> None:
    x, y = activation_like(1500, 2 * 16, seed=5)
    np.save(tmp_path / "layers.npy", x.reshape(1500, 2, 16))
    np.save(tmp_path / "y.npy", y)
    command = (
        "progress_bar=false",
        "backend=pytorch",
        "device=cpu",
        "data=npy",
        f"data.x={tmp_path / 'layers.npy'}",
        f"data.y={tmp_path / 'y.npy'}",
        "data.layer=all",
        "probe.optimizer=adamw",
        "probe.batch_size=256",
        "probe.max_iterations=3",
        "eval.bootstrap_resamples=0",
        *signal_at(1, 3, signal.SIGTERM, tmp_path / "signalled"),
    )
    stopped = run(*command, run_dir=tmp_path / "run")
    assert stopped.returncode == 143, stopped.stderr
    line = stopped.stderr.strip().splitlines()[-1]
    assert f"the fit's checkpoint is kept in {tmp_path / 'run' / 'layer_00' / '.staging' / 'resume'}" in line
    resumed = run(*command, "resume=true", run_dir=tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming fit 1 from" in resumed.stdout
    assert (tmp_path / "run" / "layers.csv").is_file()
