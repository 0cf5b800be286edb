"""One evaluation of the objective on resident half-precision data: one read (fused) against two.

    python benchmarks/fused_evaluation.py [--train-rows 1048576] [--holdout-rows 262144] [--dim 8192]
                                          [--path 6] [--repeats 20] [--shapes] [--fits 3]

In one process, on one GPU: draws activation-like float16 data (`activation_like_tensor`): a training
split and validation and test splits of `--holdout-rows` each, and measures on the training split:

- the read floor: split bytes / the best read bandwidth of this run (a float32 sum of the split, and
  cuBLAS's logits product alone, whichever is faster), and the device copy bandwidth for reference;
- one evaluation (loss and gradient, captured as a CUDA graph as a fit runs it) through the
  two-product path and, for one probe, through the fused kernel: milliseconds, and the ratio to the
  read floor; a path of `--path` columns takes the two products;
- their agreement: the fused gradient against float64 on the first 65,536 rows, and against the
  two-product gradient on the whole split;
- `--shapes`: the fused kernel alone under several launch shapes (programs per multiprocessor, rows
  per group, warps);
- the whole fit (`TorchProbeTrainer`, raw features, median of `--fits`): seconds, evaluations, and
  the ratio to the floor of its passes (one read per evaluation).
"""

from __future__ import annotations

import argparse
import platform

import torch
from gpu_scale import Data, backend_fit, copy_bandwidth
from half_products import timed

from probe_lab.data.synthetic import activation_like_tensor
from probe_lab.fit import fused_logistic
from probe_lab.fit.evaluation import Evaluation
from probe_lab.fit.module import ProbeModule, prepared_module
from probe_lab.settings import OptimizerName, ProbeTrainingConfig


def timed_ms(call, repeats: int) -> float:
    """Median milliseconds of `call()` over `repeats` runs, timed with CUDA events after a warm-up."""
    return timed(call, repeats) * 1e3


def read_floor_ms(x: torch.Tensor, repeats: int) -> tuple[float, dict[str, float]]:
    """The fastest read of x this run measured, in ms, and each reader's time."""
    columns = torch.zeros((x.shape[1], 16), dtype=x.dtype, device=x.device)
    readers = {
        "sum (float32)": lambda: x.sum(dtype=torch.float32),
        "cuBLAS x @ (D, 16)": lambda: torch.mm(x, columns, out_dtype=torch.float32),
    }
    times = {name: timed_ms(reader, repeats) for name, reader in readers.items()}
    return min(times.values()), times


def module_for(data: Data, columns: int) -> ProbeModule:
    train = data.datasets()[0]
    path = [100.0 * 10.0 ** (i - columns // 2) for i in range(columns)] if columns > 1 else [100.0]
    module = prepared_module(
        train, path, ProbeTrainingConfig(device="cuda"), OptimizerName.lbfgs, device="cuda", resident=data.train
    )
    with torch.no_grad():  # away from the start, where every residual is alike
        module.probe.linear.weight.normal_(std=0.05)
    return module


def evaluation_rows(data: Data, y: torch.Tensor, columns: int, floor: float, repeats: int) -> list[str]:
    module = module_for(data, columns)
    x, n = data.train, len(data.train)
    objective = module.objective
    paths = {"two products": lambda: objective.two_product_loss_sum(module.probe, x, y) / n + module.penalty()}
    if fused_logistic.applies(x, columns):
        paths["fused (one read)"] = lambda: objective.loss_sum(module.probe, x, y) / n + module.penalty()
    lines, gradients = [], {}
    for name, objective_fn in paths.items():
        evaluation = Evaluation(module, objective_fn, x.device)
        ms = timed_ms(evaluation, repeats)
        gradients[name] = module.probe.linear.weight.grad.double().clone()
        lines.append(f"| {columns} | {name} | {ms:.2f} | {ms / floor:.2f} |")
    if len(gradients) == 1:
        return lines
    two, fused = gradients["two products"], gradients["fused (one read)"]
    agreement = float((fused - two).norm() / two.norm())
    lines.append(f"| {columns} | fused against two products: relative gradient difference | {agreement:.1e} | |")
    return lines


def float64_agreement(data: Data, y: torch.Tensor) -> float:
    rows = 65536
    x, labels = data.train[:rows], y[:rows]
    generator = torch.Generator(device="cuda").manual_seed(0)
    weight = torch.randn(x.shape[1], device="cuda", generator=generator) * 0.01
    bias = torch.randn(1, device="cuda", generator=generator)
    _, grad, _ = fused_logistic.loss_and_gradient(x, labels, weight, bias)
    weight64 = weight.double().requires_grad_()
    logits = x.double() @ weight64 + bias.double()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.double(), reduction="sum").backward()
    return float((grad.double() - weight64.grad).norm() / weight64.grad.norm())


def shape_rows(data: Data, y: torch.Tensor, floor: float, repeats: int) -> list[str]:
    x = data.train
    weight = torch.randn(x.shape[1], device="cuda") * 0.01
    bias = torch.zeros(1, device="cuda")
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    default = fused_logistic.launch_shape(x.device, x.shape[1])
    shapes = [default] + [
        fused_logistic.LaunchShape(sms * per_sm, rows, default.block_dim, warps)
        for per_sm in (1, 2, 4)
        for rows in (1, 2, 4, 8)
        for warps in (4, 8, 16)
    ]
    lines = []
    for shape in shapes:
        try:
            ms = timed_ms(
                lambda shape=shape: fused_logistic.loss_and_gradient(x, y, weight, bias, launch=shape), repeats
            )
        except Exception as err:  # a shape the compiler cannot fit in the multiprocessor's resources
            lines.append(f"| {shape} | failed: {type(err).__name__} | |")
            continue
        mark = " (default)" if shape is default else ""
        lines.append(f"| {shape}{mark} | {ms:.2f} | {ms / floor:.2f} |")
    return lines


def draw(train_rows: int, holdout_rows: int, dim: int, device: torch.device) -> Data:
    x, y = activation_like_tensor(train_rows + 2 * holdout_rows, dim, 0, device=device, dtype=torch.float16)
    a, b = train_rows, train_rows + holdout_rows
    return Data(x[:a], x[a:b], x[b:], y[:a], y[a:b], y[b:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=1048576)
    parser.add_argument("--holdout-rows", type=int, default=262144, help="rows of the validation and of the test split")
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--path", type=int, default=6, help="columns of the regularization path measured")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shapes", action="store_true", help="time the fused kernel under several launch shapes")
    parser.add_argument("--fits", type=int, default=3, help="whole fits per row (0: none); the median is reported")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# {torch.cuda.get_device_name(device)}; torch {torch.__version__}; Python {platform.python_version()}")
    properties = torch.cuda.get_device_properties(device)
    print(f"# {properties.multi_processor_count} multiprocessors, L2 {properties.L2_cache_size / 2**20:.0f} MiB")

    data = draw(args.train_rows, args.holdout_rows, args.dim, device)
    y = torch.from_numpy(data.y_train).float().to(device)
    x = data.train
    train_bytes = x.numel() * x.element_size()
    floor, readers = read_floor_ms(x, args.repeats)
    bandwidth = copy_bandwidth(x)
    print(
        f"# training split {x.shape[0]} x {args.dim} float16: {train_bytes / 1e9:.2f} GB; read floor {floor:.2f} ms "
        f"({train_bytes / floor / 1e6:.0f} GB/s; "
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in readers.items())
        + f"); device copy {bandwidth / 1e9:.0f} GB/s (read + write)\n"
    )
    print("| columns | evaluation | ms | / read floor |")
    print("| ---: | --- | ---: | ---: |")
    for columns in (1, args.path):
        for line in evaluation_rows(data, y, columns, floor, args.repeats):
            print(line)
    agreement = float64_agreement(data, y)
    print(f"| 1 | fused against float64, 65,536 rows: relative gradient error | {agreement:.1e} | |")
    if args.shapes:
        print("\n| launch shape (one probe) | ms | / read floor |")
        print("| --- | ---: | ---: |")
        for line in shape_rows(data, y, floor, max(5, args.repeats // 4)):
            print(line)
    if args.fits:
        fit_args = argparse.Namespace(device=args.device, regularization=100.0)
        print(
            "\n| fit | s | evaluations | one read each: floor s | / floor | L-BFGS s | outside L-BFGS s | test AUROC |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        backend_fit(Data.draw(4096, 256, device), fit_args)  # start-up, not measured
        for label, regularization in (("one probe, regularization 100", 100.0), (f"path of {args.path}", None)):
            if regularization is None:
                fit_args.regularization = [100.0 * 10.0 ** (i - args.path // 2) for i in range(args.path)]
            fits = sorted((backend_fit(data, fit_args) for _ in range(args.fits)), key=lambda f: f[0].fit_seconds)
            trainer, test = fits[len(fits) // 2]
            details = trainer.fit_details
            passes_floor = details["evaluations"] * floor / 1e3
            print(
                f"| {label} | {trainer.fit_seconds:.3f} | {details['evaluations']} | {passes_floor:.3f} | "
                f"{trainer.fit_seconds / passes_floor:.2f} | {details['optimize_seconds']:.3f} | "
                f"{trainer.fit_seconds - details['optimize_seconds']:.3f} | {test:.4f} |"
            )


if __name__ == "__main__":
    main()
