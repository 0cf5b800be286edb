"""The Lightning Trainer's fixed cost around a full-batch fit, measured on data too small to matter.

    python benchmarks/trainer_overhead.py [--device cuda] [--repeats 5] [--profile 20]

Fits the pytorch backend `--repeats` times on 4096 × 256 activation-like rows (float16 on a GPU) and
prints, per fit, the backend's fit seconds and its parts (load, statistics, the L-BFGS loop): what
remains is the Trainer (construction, setup, the validation pass, checkpointing). Then profiles one
more fit and prints the `--profile` largest cumulative entries.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

import torch

from probe_lab.backends.lightning import TorchProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.synthetic import activation_like_tensor
from probe_lab.settings import ProbeTrainingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", type=int, default=20)
    args = parser.parse_args()
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    x, y = activation_like_tensor(6000, 256, seed=0, device=args.device, dtype=dtype)
    train, val = ActivationDataset(x[:4096], y[:4096]), ActivationDataset(x[4096:], y[4096:])

    def fit() -> TorchProbeTrainer:
        trainer = TorchProbeTrainer(256, ProbeTrainingConfig(device=args.device))
        trainer.fit_datasets(train, val)
        return trainer

    fit()  # start-up (CUDA context, imports) is not the Trainer's per-fit cost
    print("| fit s | load s | statistics s | L-BFGS loop s | evaluations | rest (Trainer) s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for _ in range(args.repeats):
        trainer = fit()
        d = trainer.fit_details
        rest = trainer.fit_seconds - d["load_seconds"] - d["statistics_seconds"] - d["optimize_seconds"]
        print(
            f"| {trainer.fit_seconds:.4f} | {d['load_seconds']:.4f} | {d['statistics_seconds']:.4f} | "
            f"{d['optimize_seconds']:.4f} | {d['evaluations']} | {rest:.4f} |"
        )
    profile = cProfile.Profile()
    profile.runcall(fit)
    report = io.StringIO()
    pstats.Stats(profile, stream=report).sort_stats("cumulative").print_stats(args.profile)
    print(report.getvalue())


if __name__ == "__main__":
    main()
