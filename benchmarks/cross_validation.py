"""Choosing the regularization: `regularization=auto cv_folds=5` against the best value in hindsight
and scikit-learn's LogisticRegressionCV, on data where the penalty matters.

    python benchmarks/cross_validation.py [--n 2000] [--dim 256] [--test 20000] [--device cpu|cuda]
                                          [--no-sklearn-cv]

The data are few noisy rows with features of unequal scale (a mislabelled share, a weak direction),
so too little and too much penalty both cost test AUROC. Every probe is trained on the same n rows
(training and validation together) and scored on a large separate test set. Rows, side by side:
- the default single value (regularization=100) and every value of the auto path trained alone:
  the best of these in hindsight is the target a choice can at most reach;
- the pytorch and sklearn backends with regularization=auto chosen on a 20% validation split
  (cv_folds=0) and by 5-fold cross-validation (cv_folds=5), with time and the value chosen;
- LogisticRegressionCV(Cs=the same 15 values, cv=the same folds, scoring="roc_auc").
The cost of cross-validation is given relative to one fit of the chosen value on the same rows with
the same backend (the goal: 5 folds × 15 values ≤ 10× one fit on the GPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from datetime import date

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from probe_lab.backends.pytorch import TorchProbeTrainer
from probe_lab.backends.sklearn import SklearnProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import split_dataset
from probe_lab.settings import ProbeTrainingConfig
from probe_lab.settings.probe import AUTO_REGULARIZATION

SEED = 0


def noisy_task(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose label follows a weak direction through heavy noise, features of unequal scale."""
    rng = np.random.default_rng(seed)
    scales = np.random.default_rng(1).uniform(0.2, 5.0, size=dim)
    direction = np.random.default_rng(2).normal(size=dim) / np.linspace(0.5, 4.0, dim)
    x = rng.normal(size=(n, dim)) * scales + 3.0
    y = ((x - 3.0) @ direction + rng.normal(scale=2.0 * np.sqrt(dim), size=n) > 0).astype(np.int64)
    return x.astype(np.float32), y


def timed_fit(trainer_class: type, dim: int, train, val, device: str, **settings):
    config = ProbeTrainingConfig(device=device, precision="32", seed=SEED, **settings)
    trainer = trainer_class(dim, config)
    start = time.perf_counter()
    trainer.fit_datasets(train, val)
    return time.perf_counter() - start, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="rows to train and choose on")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--test", type=int, default=20000, help="rows of the separate test set")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-sklearn-cv", action="store_true", help="skip LogisticRegressionCV (slow at large n)")
    parser.add_argument("--backends", default="pytorch,sklearn", help="the probe_lab backends to time")
    args = parser.parse_args()

    x, y = noisy_task(args.n, args.dim, seed=10)
    x_test, y_test = noisy_task(args.test, args.dim, seed=11)
    rows = ActivationDataset(x, y, name="train+val")
    splits = split_dataset(rows, 0.2, 0.0, seed=SEED)  # the validation split a cv_folds=0 choice uses
    pooled = splits.train.joined(splits.val)  # the rows in the order cross-validation pools them
    pooled_x, pooled_y = pooled.materialize(), pooled.labels
    if args.device != "cpu":
        splits = type(splits)(splits.train.on_device(args.device), splits.val.on_device(args.device), None)
        pooled = splits.train.joined(splits.val)
    machine = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if args.device != "cpu" else ""
    print(f"# {date.today()}  {machine}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}")
    print(f"# n={args.n} (train+val) dim={args.dim} test={args.test} device={args.device}")

    def test_auroc(trainer) -> float:
        return float(roc_auc_score(y_test, x_test @ trainer.coef_ + trainer.intercept_))

    timed_fit(TorchProbeTrainer, args.dim, splits.train, splits.val, args.device)  # warm-up: imports, set-up
    print(f"{'probe':<46} {'seconds':>8} {'chosen':>9} {'test AUROC':>11}")
    alone = {}  # every value trained alone on all the rows: by the pytorch backend on a GPU
    hindsight_class = SklearnProbeTrainer if args.device == "cpu" else TorchProbeTrainer
    for value in AUTO_REGULARIZATION:
        _, trainer = timed_fit(hindsight_class, args.dim, pooled, pooled, args.device, regularization=value)
        alone[value] = test_auroc(trainer)
    hindsight = max(alone, key=alone.get)
    print(f"{'regularization=100 (the default)':<46} {'':>8} {100:>9g} {alone[100.0]:11.4f}")
    print(f"{'best single value in hindsight':<46} {'':>8} {hindsight:>9g} {alone[hindsight]:11.4f}")

    for name, trainer_class in (("pytorch", TorchProbeTrainer), ("sklearn", SklearnProbeTrainer)):
        if name not in args.backends.split(","):
            continue
        device = args.device if name == "pytorch" else "cpu"
        on_val_s, on_val = timed_fit(trainer_class, args.dim, splits.train, splits.val, device, regularization="auto")
        cv_s, cv = timed_fit(
            trainer_class, args.dim, splits.train, splits.val, device, regularization="auto", cv_folds=5
        )
        one_s, _ = timed_fit(trainer_class, args.dim, pooled, splits.val, device, regularization=cv.regularization)
        label = f"{name}, auto, chosen on validation"
        print(f"{label:<46} {on_val_s:8.3f} {on_val.regularization:>9g} {test_auroc(on_val):11.4f}")
        label = f"{name}, auto, cv_folds=5"
        print(f"{label:<46} {cv_s:8.3f} {cv.regularization:>9g} {test_auroc(cv):11.4f}")
        print(f"{f'{name}, one fit of the chosen value':<46} {one_s:8.3f}")
        print(f"{f'{name}: CV (5 folds × 15 values + refit) / one fit':<46} {cv_s / one_s:7.1f}x")

    if not args.no_sklearn_cv:
        folds = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED).split(pooled_x, pooled_y))
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = LogisticRegressionCV(
                Cs=[1.0 / value for value in AUTO_REGULARIZATION], cv=folds, scoring="roc_auc", max_iter=2000
            ).fit(pooled_x, pooled_y)
        seconds = time.perf_counter() - start
        auroc = float(roc_auc_score(y_test, reference.decision_function(x_test)))
        label = "sklearn LogisticRegressionCV (same folds)"
        print(f"{label:<46} {seconds:8.3f} {1 / reference.C_[0]:>9g} {auroc:11.4f}")


if __name__ == "__main__":
    main()
