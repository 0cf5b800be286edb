"""Where a full-batch fit of the pytorch backend spends its time, phase by phase of the Lightning Trainer.

    python benchmarks/trainer_overhead.py [--device cuda] [--n 6000] [--dim 256] [--repeats 5]
                                          [--standardize] [--profile 0]

Draws activation-like rows (`activation_like_tensor`, float16 on a GPU, held there), takes 60% for
training and the next 20% for validation, fits the pytorch backend `--repeats` times
after one unmeasured fit (CUDA context, imports), and prints per fit, in milliseconds: the backend's
fit time; its own stages before the Trainer starts (loading, statistics); the Trainer's phases as a
callback sees them (set-up up to the training step, the step and the L-BFGS loop inside it, the
validation pass, checkpointing and the end of the epoch, teardown); and what remains (the Trainer's
construction and set-up before `on_fit_start`, reading the weights back). "statistics" is host time
and includes building the module; on a GPU the statistics' kernels finish during the Trainer's
set-up. Full-batch L-BFGS only: the data must fit the device's memory budget. With
`--profile K`, profiles one more fit and prints its K largest cumulative entries.

The defaults (6000 × 256) show the Trainer's fixed cost on data too small to matter; `--n 262144
--dim 8192` puts it beside the fit of benchmarks/gpu_scale.py.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import lightning.pytorch as pl
import torch

from probe_lab.backends.pytorch import TorchProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.synthetic import activation_like_tensor
from probe_lab.settings import ProbeTrainingConfig


class PhaseTimer(pl.Callback):
    """Host time at the Trainer's hooks during the last fit."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def _mark(self, hook: str) -> None:
        self.at[hook] = time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at.clear()
        self._mark("fit_start")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self._mark("train_batch_start")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self._mark("train_batch_end")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("validation_start")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("validation_end")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("train_end")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("fit_end")

    def between(self, first: str, last: str) -> float:
        return self.at[last] - self.at[first]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=6000, help="rows drawn")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--standardize", action="store_true")
    parser.add_argument("--profile", type=int, default=0)
    args = parser.parse_args()
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    x, y = activation_like_tensor(args.n, args.dim, seed=0, device=args.device, dtype=dtype)
    a, b = int(0.6 * args.n), int(0.8 * args.n)
    train, val = ActivationDataset(x[:a], y[:a], name="train"), ActivationDataset(x[a:b], y[a:b], name="val")
    timer = PhaseTimer()

    def fit() -> TorchProbeTrainer:
        config = ProbeTrainingConfig(device=args.device, standardize=args.standardize)
        trainer = TorchProbeTrainer(args.dim, config, callbacks=[timer])
        trainer.fit_datasets(train, val)
        return trainer

    fit()  # start-up (CUDA context, imports) is not the Trainer's per-fit cost
    print(f"# {args.device}; training {a} x {args.dim} {str(dtype).removeprefix('torch.')}, validation {b - a}")
    print(
        "| fit | load | statistics | Trainer set-up | training step | L-BFGS loop (evaluations) | validation | "
        "checkpoint, epoch end | teardown | rest |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for _ in range(args.repeats):
        trainer = fit()
        d, fit_seconds = trainer.fit_details, trainer.fit_seconds or 0.0
        if d["optimizer"] != "lbfgs":
            raise SystemExit(f"the fit used {d['optimizer']}, not full-batch L-BFGS: use less data")
        phases = [
            timer.between("fit_start", "train_batch_start"),
            timer.between("train_batch_start", "train_batch_end"),
            timer.between("validation_start", "validation_end"),
            timer.between("validation_end", "train_end"),
            timer.between("train_end", "fit_end"),
        ]
        rest = fit_seconds - d["load_seconds"] - d["statistics_seconds"] - timer.between("fit_start", "fit_end")
        setup, step, validation, checkpoint, teardown = (1e3 * p for p in phases)
        print(
            f"| {1e3 * fit_seconds:.1f} | {1e3 * d['load_seconds']:.1f} | {1e3 * d['statistics_seconds']:.1f} | "
            f"{setup:.1f} | {step:.1f} | {1e3 * d['optimize_seconds']:.1f} ({d['evaluations']}) | {validation:.1f} | "
            f"{checkpoint:.1f} | {teardown:.1f} | {1e3 * rest:.1f} |"
        )
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(fit)
        report = io.StringIO()
        pstats.Stats(profile, stream=report).sort_stats("cumulative").print_stats(args.profile)
        print(report.getvalue())


if __name__ == "__main__":
    main()
