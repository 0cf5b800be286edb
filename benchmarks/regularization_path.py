"""What a regularization path costs: K values in one pytorch-backend fit against one value at a time.

    python benchmarks/regularization_path.py [--n 20000] [--dim 1024] [--k 8] [--device cpu|cuda]

On activation-like data (anisotropic, outlier dimensions, non-zero mean), the pytorch backend trains
the K values of a log-spaced path as the columns of one D×K probe (one L-BFGS run, one pass over the
data per evaluation); the reference is the same backend fitting each value alone. Prints fit seconds
and L-BFGS evaluations, the ratio of the path to one value (mean and slowest of the K single fits),
and how far each column's validation AUROC is from its single fit. The sklearn backend's path (a loop
with warm starts) is shown for scale.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

import numpy as np
import torch

from probe_lab.backends.pytorch import TorchProbeTrainer
from probe_lab.backends.sklearn import SklearnProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import split_dataset
from probe_lab.data.synthetic import activation_like
from probe_lab.settings import ProbeTrainingConfig


def fit(trainer_class: type, splits, regularization, device: str) -> tuple[float, TorchProbeTrainer]:
    config = ProbeTrainingConfig(device=device, regularization=regularization, precision="32")
    trainer = trainer_class(splits.train.dim, config)
    start = time.perf_counter()
    trainer.fit_datasets(splits.train, splits.val)
    return time.perf_counter() - start, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many fits per measurement")
    parser.add_argument("--no-sklearn", action="store_true", help="skip the sklearn path (slow at large n)")
    args = parser.parse_args()

    x, y = activation_like(args.n, args.dim, seed=0)
    splits = split_dataset(ActivationDataset(x, y), 0.2, 0.2, seed=0)
    path = [float(v) for v in np.logspace(-2, 3, args.k)]
    machine = platform.processor() or platform.machine()
    print(f"# {date.today()}  {machine}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"# n={args.n} dim={args.dim} k={args.k} device={args.device}; path {', '.join(f'{v:g}' for v in path)}")
    fit(TorchProbeTrainer, splits, path[0], args.device)  # warm-up: imports, allocator, Lightning set-up

    def best_of(regularization) -> tuple[float, TorchProbeTrainer]:
        runs = [fit(TorchProbeTrainer, splits, regularization, args.device) for _ in range(args.repeats)]
        return min(runs, key=lambda run: run[0])

    singles = [best_of(value) for value in path]
    joint_seconds, joint = best_of(path)
    sk_seconds = None if args.no_sklearn else fit(SklearnProbeTrainer, splits, path, "cpu")[0]

    print(f"{'fit':<34} {'seconds':>8} {'evaluations':>12} {'val AUROC':>10}")
    for value, (seconds, trainer) in zip(path, singles, strict=True):
        evaluations = trainer.fit_details.get("evaluations", "")
        print(f"{f'pytorch, regularization {value:g}':<34} {seconds:8.3f} {evaluations:>12} {trainer.val_auroc:10.4f}")
    evaluations = joint.fit_details.get("evaluations", "")
    label = f"pytorch, path of {args.k} (one D×K fit)"
    print(f"{label:<34} {joint_seconds:8.3f} {evaluations:>12} {joint.val_auroc:10.4f}")
    if sk_seconds is not None:
        print(f"{f'sklearn, path of {args.k} (warm starts)':<34} {sk_seconds:8.3f}")

    mean_single = float(np.mean([seconds for seconds, _ in singles]))
    slowest = max(seconds for seconds, _ in singles)
    pairs = zip(joint.regularization_path or [], singles, strict=True)
    gaps = [abs(point["val_auroc"] - trainer.val_auroc) for point, (_, trainer) in pairs]
    print(f"path / mean single fit:    {joint_seconds / mean_single:.2f}x   (target ≤ 2x)")
    print(f"path / slowest single fit: {joint_seconds / slowest:.2f}x")
    print(f"path / {args.k} single fits:     {joint_seconds / sum(s for s, _ in singles):.2f}x")
    print(f"largest |Δ val AUROC| of a path column vs its single fit: {max(gaps):.2e}")


if __name__ == "__main__":
    main()
