"""Side-by-side figures for the two backends and the seed guide's trainer, in one process.

    python benchmarks/backends_cpu.py [--n 20000] [--dim 1024] [--threads N]

Prints two tables:
1. The seed guide's task (2000 samples per class, 4096 dims): test AUROC and fit seconds of
   probe_lab's sklearn and pytorch backends and of a reimplementation of the seed's trainer
   (nn.Linear with xavier init, AdamW lr=1e-3 with weight_decay=1/regularization, batch 8192,
   early stopping with patience 5 on validation AUROC).
2. Activation-like data (outlier dimensions, non-zero mean): the cost of reaching the optimum —
   sklearn's newton-cholesky and lbfgs, probe_lab's preconditioned full-batch L-BFGS, and the same
   L-BFGS on the unconditioned problem — with objective evaluations, test AUROC and the cosine of
   each probe's weights with sklearn's.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from plain_lbfgs import minimize
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from probe_lab.backends.pytorch import TorchProbeTrainer
from probe_lab.backends.sklearn import SklearnProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import Splits, split_dataset
from probe_lab.data.synthetic import activation_like, seed_task
from probe_lab.fit.module import prepared_module
from probe_lab.metrics import auroc
from probe_lab.settings import OptimizerName, ProbeTrainingConfig


def seed_trainer(splits: Splits, regularization: float = 100.0, patience: int = 5, max_epochs: int = 2000):
    """The seed guide's TorchProbeTrainer: AdamW weight decay in place of the L2 penalty."""
    torch.manual_seed(42)
    x = torch.from_numpy(splits.train.materialize())
    y = torch.from_numpy(splits.train.labels).float()
    x_val = torch.from_numpy(splits.val.materialize())
    linear = nn.Linear(x.shape[1], 1)
    nn.init.xavier_uniform_(linear.weight)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-3, weight_decay=1.0 / regularization)
    best, best_state, stale = -1.0, None, 0
    start = time.perf_counter()
    for _ in range(max_epochs):
        for batch in torch.randperm(len(y)).split(8192):
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(linear(x[batch])[:, 0], y[batch]).backward()
            optimizer.step()
        with torch.no_grad():
            score = auroc(splits.val.labels, linear(x_val)[:, 0].numpy())
        if score > best:
            best, best_state, stale = score, {k: v.clone() for k, v in linear.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= patience:
                break
    seconds = time.perf_counter() - start
    linear.load_state_dict(best_state)
    with torch.no_grad():
        scores = linear(torch.from_numpy(splits.test.materialize()))[:, 0].numpy()
    return seconds, auroc(splits.test.labels, scores)


def lbfgs_evaluations(splits: Splits, preconditioned: bool, regularization: float = 100.0):
    """Plain full-batch L-BFGS on probe_lab's objective, with or without its coordinates."""
    config = ProbeTrainingConfig(device="cpu", regularization=regularization)
    module = prepared_module(splits.train, [regularization], config, OptimizerName.lbfgs)
    if not preconditioned:
        module.probe.set_coordinates(torch.zeros(splits.train.dim), torch.ones(splits.train.dim))
        module.objective.penalty_weights.fill_(1.0)
    x = torch.from_numpy(splits.train.materialize())
    y = torch.from_numpy(splits.train.labels).float()
    seconds, evaluations = minimize(module, x, y)
    weight = module.probe.raw_weight().numpy()
    scores = splits.test.materialize() @ weight
    return seconds, evaluations, auroc(splits.test.labels, scores), weight


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="rows of activation-like data")
    parser.add_argument("--dim", type=int, default=1024, help="width of activation-like data")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}")

    x, y = seed_task(2000, 4096, seed=42)
    splits = split_dataset(ActivationDataset(x, y), 0.2, 0.2, seed=42)
    print("\n## seed task (4000 x 4096, 60/20/20)\n")
    print("| trainer | fit s | test AUROC |\n| --- | ---: | ---: |")
    for name, cls in (("probe_lab sklearn", SklearnProbeTrainer), ("probe_lab pytorch (L-BFGS)", TorchProbeTrainer)):
        trainer = cls(4096, ProbeTrainingConfig(device="cpu"))
        trainer.fit_datasets(splits.train, splits.val)
        test_auroc = auroc(splits.test.labels, trainer.decision_function(splits.test))
        print(f"| {name} | {trainer.fit_seconds:.2f} | {test_auroc:.4f} |")
    seconds, test_auroc = seed_trainer(splits)
    print(f"| seed guide trainer (AdamW, weight decay) | {seconds:.2f} | {test_auroc:.4f} |")

    x, y = activation_like(args.n, args.dim, seed=0)
    splits = split_dataset(ActivationDataset(x, y), 0.2, 0.2, seed=0)
    print(f"\n## activation-like data ({args.n} x {args.dim}, 4 outlier dims x30, non-zero mean)\n")
    print("| fit | s | iterations / evaluations | test AUROC | cosine with sklearn |")
    print("| --- | ---: | ---: | ---: | ---: |")
    reference = None
    for solver in ("newton-cholesky", "lbfgs"):
        trainer = SklearnProbeTrainer(args.dim, ProbeTrainingConfig(device="cpu", solver=solver))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            trainer.fit_datasets(splits.train, splits.val)
        reference = trainer.coef_ if reference is None else reference
        note = "" if trainer.fit_details["converged"] else " (not converged)"
        print(
            f"| sklearn {solver} | {trainer.fit_seconds:.2f} | {trainer.fit_details['iterations']}{note} | "
            f"{auroc(splits.test.labels, trainer.decision_function(splits.test)):.4f} | "
            f"{cosine(reference, trainer.coef_):.6f} |"
        )
    for label, preconditioned in (("preconditioned (probe_lab)", True), ("unconditioned", False)):
        seconds, evaluations, test_auroc, weight = lbfgs_evaluations(splits, preconditioned)
        print(
            f"| L-BFGS-B on the torch objective, {label} | {seconds:.2f} | {evaluations} | {test_auroc:.4f} | "
            f"{cosine(reference, weight):.6f} |"
        )
    trainer = TorchProbeTrainer(args.dim, ProbeTrainingConfig(device="cpu"))
    trainer.fit_datasets(splits.train, splits.val)
    print(
        f"| probe_lab pytorch backend (Lightning) | {trainer.fit_seconds:.2f} | "
        f"{trainer.fit_details['evaluations']} | "
        f"{auroc(splits.test.labels, trainer.decision_function(splits.test)):.4f} | "
        f"{cosine(reference, trainer.coef_):.6f} |"
    )


if __name__ == "__main__":
    main()
