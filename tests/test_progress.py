"""Progress output: bars on a terminal; anywhere else a few plain lines and no carriage return."""

from __future__ import annotations

import io
import re
import sys
import threading
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import REPO, run_module
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from probe_lab.backends.pytorch import TorchProbeTrainer
from probe_lab.convert import main as convert_main
from probe_lab.data.synthetic import activation_like
from probe_lab.fit.progress_bar import PlainProgressBar, lightning_progress_bar
from probe_lab.fit.trainer import LightningParts, default_callbacks
from probe_lab.report.progress import PlainProgress, progress_counter
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.store import ActivationStore

FINAL_FIT_LINE = re.compile(r"epoch 1/1  step 1  train_loss \d\.\d+  val_auroc 0\.\d+  \(\d+ s\)")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(params=[True, False], ids=["terminal", "log"])
def on_a_terminal(request: pytest.FixtureRequest) -> bool:
    """Whether the test runs on a terminal: `as_terminal` must then replace stdout and stderr in the
    test itself (pytest puts its own streams back between a fixture and the test)."""
    return request.param


def as_terminal(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    """stdout and stderr become terminals, or plain files, whatever pytest's own streams are."""
    stream = Terminal if terminal else io.StringIO
    monkeypatch.setattr(sys, "stdout", stream())
    monkeypatch.setattr(sys, "stderr", stream())


# -- the plain lines ---------------------------------------------------------------------------------


def test_plain_progress_writes_at_most_one_line_an_interval_and_one_at_the_end() -> None:
    clock, out = FakeClock(), io.StringIO()
    with PlainProgress(4_000_000_000, desc="scan store", unit="B", unit_scale=True, clock=clock, stream=out) as bar:
        for _ in range(100):  # 100 updates, one a second
            clock.now += 1
            bar.update(40_000_000)
    assert out.getvalue().splitlines() == [
        "scan store: 1.20GB of 4.00GB (30%)  (30 s)",
        "scan store: 2.40GB of 4.00GB (60%)  (1 min 00 s)",
        "scan store: 3.60GB of 4.00GB (90%)  (1 min 30 s)",
        "scan store: 4.00GB of 4.00GB (100%)  (1 min 40 s)",
    ]


def test_plain_progress_of_short_work_is_one_line_when_it_ends() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = PlainProgress(600, desc="convert", unit="rows", interval_s=30, clock=clock, stream=out)
    for _ in range(6):
        clock.now += 4.9
        bar.update(100)
    assert out.getvalue() == ""
    bar.close()
    bar.close()
    assert out.getvalue() == "convert: 600 of 600 rows (100%)  (29 s)\n"


def test_plain_progress_leaves_the_last_word_to_an_error() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), PlainProgress(10, desc="scan store", unit="B", stream=out) as bar:
        bar.update(5)
        raise RuntimeError("checksum mismatch")
    assert out.getvalue() == ""


def test_plain_progress_counts_updates_from_several_threads() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = PlainProgress(8000, desc="scan store", unit="rows", clock=clock, stream=out)

    def count() -> None:
        for _ in range(1000):
            bar.update(1)

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bar.close()
    assert out.getvalue() == "scan store: 8000 of 8000 rows (100%)  (0 s)\n"


# -- the choice: terminal or not -----------------------------------------------------------------------


def test_scans_and_conversions_draw_tqdm_bars_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, on_a_terminal: bool
) -> None:
    as_terminal(monkeypatch, on_a_terminal)
    counter = progress_counter(100, desc="convert", unit="rows")
    assert isinstance(counter, tqdm) == on_a_terminal
    assert isinstance(counter, PlainProgress) != on_a_terminal
    counter.close()
    disabled = progress_counter(100, desc="convert", unit="rows", enabled=False)
    disabled.update(100)
    disabled.close()
    assert isinstance(disabled, tqdm) and disabled.disable


def test_the_callbacks_group_builds_the_tqdm_bar_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, on_a_terminal: bool
) -> None:
    as_terminal(monkeypatch, on_a_terminal)
    node = OmegaConf.load(REPO / "conf" / "callbacks" / "default.yaml").progress_bar
    bar, faster = instantiate(node), instantiate(node, refresh_rate=5)
    if on_a_terminal:
        assert type(bar) is TQDMProgressBar and (bar.refresh_rate, faster.refresh_rate) == (1, 5)
    else:
        assert type(bar) is PlainProgressBar and bar.lines.interval_s == 30
        assert type(instantiate(node, interval_s=5)) is PlainProgressBar


def test_the_python_api_makes_the_same_choice(monkeypatch: pytest.MonkeyPatch, on_a_terminal: bool) -> None:
    as_terminal(monkeypatch, on_a_terminal)
    bars = [callback for callback in default_callbacks(ProbeTrainingConfig()) if isinstance(callback, ProgressBar)]
    assert [type(bar) for bar in bars] == [TQDMProgressBar if on_a_terminal else PlainProgressBar]
    assert type(lightning_progress_bar()) is type(bars[0])


# -- fits ----------------------------------------------------------------------------------------------


class SeesProgressBars(pl.Callback):
    """Records the progress bars of the Trainer it runs in."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.bars = [type(callback) for callback in trainer.callbacks if isinstance(callback, ProgressBar)]


class AdvanceClock(pl.Callback):
    """Ten seconds of a fake clock go by with each training batch."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self.clock.now += 10


def _data(n: int = 300, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    return activation_like(n, dim, seed=3)


@pytest.mark.parametrize("progress_bar", [True, False])
def test_a_fit_has_exactly_the_chosen_bar_or_none(
    monkeypatch: pytest.MonkeyPatch, on_a_terminal: bool, progress_bar: bool
) -> None:
    as_terminal(monkeypatch, on_a_terminal)
    x, y = _data()
    seen = SeesProgressBars()
    trainer = TorchProbeTrainer(
        x.shape[1], ProbeTrainingConfig(device="cpu"), progress_bar=progress_bar, callbacks=[seen]
    )
    trainer.fit(x, y)
    chosen = TQDMProgressBar if on_a_terminal else PlainProgressBar
    assert seen.bars == ([chosen] if progress_bar else [])  # Lightning added no bar of its own


def test_a_full_batch_fit_off_a_terminal_writes_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _data()
    TorchProbeTrainer(x.shape[1], ProbeTrainingConfig(device="cpu"), progress_bar=True).fit(x, y)
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err
    assert len(out.err.splitlines()) == 1 and FINAL_FIT_LINE.fullmatch(out.err.strip()), out.err


def test_a_long_fit_writes_a_line_an_interval_and_one_at_the_end() -> None:
    x, y = _data()  # 240 training rows: 3 batches of 80 an epoch, 4 epochs, 10 fake seconds a batch
    clock, out = FakeClock(), io.StringIO()
    bar = PlainProgressBar(30, clock=clock, stream=out)
    config = ProbeTrainingConfig(device="cpu", optimizer="adamw", batch_size=80, max_iterations=4, early_stopping=False)
    trainer = TorchProbeTrainer(
        x.shape[1],
        config,
        progress_bar=True,
        callbacks=[AdvanceClock(clock)],
        lightning=LightningParts(callbacks=[bar]),
    )
    trainer.fit(x, y)
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[:2] for line in lines] == [
        ["epoch 1/4", "step 3"],
        ["epoch 2/4", "step 6"],
        ["epoch 3/4", "step 9"],
        ["epoch 4/4", "step 12"],
        ["epoch 4/4", "step 12"],
    ]
    assert [line.rsplit("  ", 1)[1] for line in lines] == ["(30 s)", "(1 min 00 s)", "(1 min 30 s)"] + [
        "(2 min 00 s)"
    ] * 2
    assert re.search(r"  train_loss \d\.\d+  val_auroc 0\.\d+  ", lines[-1]), lines[-1]


# -- the command lines ---------------------------------------------------------------------------------


def test_a_run_in_a_pipe_writes_short_plain_lines(tmp_path: Path) -> None:
    x, y = _data(600, 32)
    store = tmp_path / "store"
    with ActivationStore.create(store, 32, None, "float16", shard_mb=0.01) as writer:
        writer.append(torch.from_numpy(x), y)
    result = run_module(
        "probe_lab", "backend=pytorch", "device=cpu", "data=store", f"data.path={store}", run_dir=tmp_path / "run"
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr
    scan, fit = result.stderr.splitlines()
    assert re.fullmatch(r"scan store: 38\.4kB of 38\.4kB \(100%\)  \(\d+ s\)", scan), scan
    assert FINAL_FIT_LINE.fullmatch(fit), fit


def test_a_conversion_off_a_terminal_writes_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _data(600, 32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    assert convert_main([str(tmp_path / "x.npy"), str(tmp_path / "store"), "--labels", str(tmp_path / "y.npy")]) == 0
    err = capsys.readouterr().err
    assert re.fullmatch(r"convert: 600 of 600 rows \(100%\)  \(\d+ s\)\n", err), err
