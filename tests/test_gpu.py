"""GPU behaviour (skipped without CUDA): mixed precision on the device lands where the CPU does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fitting import cosine

from probe_lab.backends.pytorch import TorchProbeTrainer
from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import split_dataset
from probe_lab.data.synthetic import activation_like
from probe_lab.metrics import auroc
from probe_lab.settings import ProbeTrainingConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def splits():
    x, y = activation_like(20000, 512, seed=0)
    return split_dataset(ActivationDataset(x, y), 0.2, 0.2, seed=0)


def _fit(splits, **config) -> TorchProbeTrainer:
    trainer = TorchProbeTrainer(splits.train.dim, ProbeTrainingConfig(**config))
    trainer.fit_datasets(splits.train, splits.val)
    return trainer


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "32"])
def test_gpu_training_matches_the_cpu(splits, precision: str) -> None:
    cpu = _fit(splits, device="cpu")
    gpu = _fit(splits, device="cuda", precision=precision)
    assert gpu.fit_details["device"] == "cuda" and gpu.fit_details["precision"] == precision
    assert gpu.fit_details["converged"]
    cpu_auroc = auroc(splits.test.labels, cpu.decision_function(splits.test))
    gpu_auroc = auroc(splits.test.labels, gpu.decision_function(splits.test))
    assert abs(cpu_auroc - gpu_auroc) <= 0.002
    assert cosine(cpu.coef_, gpu.coef_) >= 0.999


def test_default_config_uses_16_mixed_on_the_gpu(splits) -> None:
    trainer = _fit(splits)  # the seed guide's defaults: device="cuda", use_mixed_precision=True
    assert (trainer.fit_details["device"], trainer.fit_details["precision"]) == ("cuda", "16-mixed")


def test_adamw_minibatches_on_the_gpu(splits) -> None:
    trainer = _fit(splits, optimizer="adamw", batch_size=1024, learning_rate=0.01, precision="16-mixed")
    assert trainer.fit_details["optimizer"] == "adamw"
    assert auroc(splits.test.labels, trainer.decision_function(splits.test)) > 0.8


def test_checkpoint_reload_reproduces_gpu_predictions(splits, tmp_path) -> None:
    trainer = _fit(splits, device="cuda")
    trainer.save_checkpoint(tmp_path / "probe.safetensors")
    reloaded = TorchProbeTrainer(splits.train.dim, ProbeTrainingConfig(device="cuda"))
    reloaded.load_checkpoint(tmp_path / "probe.safetensors")
    np.testing.assert_array_equal(trainer.predict_proba(splits.test), reloaded.predict_proba(splits.test))


def test_cuda_tensors_and_a_device_index_are_accepted(splits) -> None:
    x = torch.from_numpy(splits.train.materialize()).cuda()
    y = torch.from_numpy(splits.train.labels).cuda()
    trainer = TorchProbeTrainer(splits.train.dim, ProbeTrainingConfig(device="cuda:0"))
    trainer.fit(x, y)
    assert trainer.fit_details["device"] == "cuda"
    assert auroc(splits.test.labels, trainer.decision_function(splits.test)) > 0.8


@pytest.fixture(scope="module")
def store_splits(tmp_path_factory, splits):
    """The same rows as `splits`, written to float16 and bfloat16 stores and split the same way."""
    from probe_lab.store import ActivationStore

    x, y = activation_like(20000, 512, seed=0)
    out = {}
    for dtype in ("float16", "bfloat16"):
        path = tmp_path_factory.mktemp(dtype) / "store"
        with ActivationStore.create(path, 512, dtype=dtype, shard_mb=4) as writer:
            writer.append(x, y)
        out[dtype] = split_dataset(ActivationStore.open(path).dataset(), 0.2, 0.2, seed=0)
    return out


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_stores_train_resident_on_the_gpu_like_the_cpu(splits, store_splits, dtype: str) -> None:
    cpu = _fit(splits, device="cpu")
    gpu = _fit(store_splits[dtype], device="cuda")
    assert (gpu.fit_details["activation_dtype"], gpu.fit_details["optimizer"]) == (dtype, "lbfgs")
    assert gpu.fit_details["converged"]
    test = store_splits[dtype].test
    assert (
        abs(auroc(test.labels, gpu.decision_function(test)) - auroc(test.labels, cpu.decision_function(test))) <= 0.002
    )
    assert cosine(cpu.coef_, gpu.coef_) >= 0.999


def test_streaming_from_a_store_to_the_gpu(store_splits) -> None:
    train = store_splits["bfloat16"]
    trainer = TorchProbeTrainer(
        512,
        ProbeTrainingConfig(
            device="cuda", optimizer="adamw", memory_budget_gb=1e-6, learning_rate=0.01, batch_size=2048
        ),
    )
    trainer.fit_datasets(train.train, train.val)
    assert (trainer.fit_details["optimizer"], trainer.fit_details["activation_dtype"]) == ("adamw", "bfloat16")
    assert auroc(train.test.labels, trainer.decision_function(train.test)) > 0.8


@pytest.mark.parametrize("host_budget_gb", [None, 0])  # pinned host copy, or streamed from the store each pass
@pytest.mark.parametrize("budget_gb", [1e-6, 0.006])  # nothing kept on the GPU, or about half the 12 MB split
def test_lbfgs_beyond_the_gpu_budget_lands_on_the_resident_probe(
    store_splits, host_budget_gb: float | None, budget_gb: float
) -> None:
    train = store_splits["bfloat16"]
    resident = TorchProbeTrainer(512, ProbeTrainingConfig(device="cuda"))
    resident.fit_datasets(train.train, train.val)
    config = ProbeTrainingConfig(device="cuda", memory_budget_gb=budget_gb, host_budget_gb=host_budget_gb)
    beyond = TorchProbeTrainer(512, config)
    beyond.fit_datasets(train.train, train.val)
    assert beyond.placement.train_home.value == ("host" if host_budget_gb is None else "streamed")
    assert beyond.placement.device_bytes == int(budget_gb * 1e9)
    assert beyond.fit_details["optimizer"] == "lbfgs" and beyond.fit_details["converged"]
    assert cosine(beyond.coef_, resident.coef_) >= 0.9999
    assert abs(beyond.val_auroc - resident.val_auroc) < 1e-4


def test_regularization_path_on_the_gpu_matches_the_cpu(splits) -> None:
    path = [0.1, 10.0, 1000.0]
    cpu = _fit(splits, device="cpu", regularization=path)
    gpu = _fit(splits, device="cuda", regularization=path)
    assert gpu.regularization == cpu.regularization
    for on_cpu, on_gpu in zip(cpu.regularization_path, gpu.regularization_path, strict=True):
        assert abs(on_cpu["val_auroc"] - on_gpu["val_auroc"]) <= 0.002


@pytest.mark.parametrize("gradient_block_rows", [None, 7000])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_products_keep_float32_accuracy(dtype: torch.dtype, gradient_block_rows, monkeypatch) -> None:
    """Logits and gradients from half-precision activations on the GPU match float32 math on the same
    (rounded) values to float32's order of error, |x|·|w|·2⁻²⁰: the weights and the per-row
    gradients are not rounded to half precision. Also when the gradient is summed over blocks of
    rows (as it is for long activations), the last one shorter than the others."""
    from probe_lab.fit import linear_probe
    from probe_lab.fit.linear_probe import LinearProbe

    if gradient_block_rows is not None:
        monkeypatch.setattr(linear_probe, "_GRADIENT_BLOCK_ROWS", gradient_block_rows)
    bits = 20
    torch.manual_seed(0)
    x = (torch.randn(50000, 300, device="cuda") * torch.logspace(-2, 1.5, 300, device="cuda") + 3.0).to(dtype)
    for outputs in (1, 3):
        probe = LinearProbe(300, outputs=outputs).cuda()
        with torch.no_grad():
            probe.linear.weight.normal_().mul_(torch.logspace(-4, 0, 300, device="cuda"))
        reference = LinearProbe(300, outputs=outputs).cuda()
        reference.load_state_dict(probe.state_dict())
        half, full = probe(x), reference(x.float())
        weight = probe.folded()[0].detach().abs().reshape(outputs, -1)
        bound = (x.float().abs() @ weight.T).reshape(full.shape) * 2.0**-bits
        assert ((half - full).abs() <= bound).all()
        target = torch.rand_like(full) * 1e-4  # gradients as small as (p - y) / N
        (half * target).sum().backward()
        (full * target).sum().backward()
        grad, expected = probe.linear.weight.grad, reference.linear.weight.grad
        # Summing 50000 products in float32 in cuBLAS's order costs about 2^-17 (measured 7e-6 for
        # float16); rounding (p - y) / N to half precision would cost 2^-11.
        grad_bound = (target.reshape(len(x), -1).T @ x.float().abs()) / probe.scale.reshape(outputs, -1)
        grad_bound *= 2.0**-16
        assert ((grad - expected).abs() <= grad_bound.reshape(grad.shape) + 1e-12).all()


def test_gpu_resident_data_trains_and_scores_in_place(splits) -> None:
    """Tensors already on the GPU are trained on, validated and scored there, with no host copy."""
    x = {part: torch.from_numpy(getattr(splits, part).materialize()).cuda().half() for part in ("train", "val", "test")}
    train = ActivationDataset(x["train"], splits.train.labels)
    assert train.device.type == "cuda" and train.to_device("cuda").data_ptr() == x["train"].data_ptr()
    trainer = TorchProbeTrainer(512, ProbeTrainingConfig(device="cuda"))
    trainer.fit_datasets(train, ActivationDataset(x["val"], splits.val.labels))
    assert trainer.fit_details["activation_dtype"] == "float16" and trainer.fit_details["converged"]
    on_gpu = trainer.decision_function(ActivationDataset(x["test"]))
    on_host = trainer.decision_function(ActivationDataset(x["test"].cpu().numpy()))
    np.testing.assert_allclose(on_gpu, on_host, rtol=1e-4, atol=1e-4)


def test_splits_of_a_store_load_onto_the_gpu_as_read_on_the_host(store_splits) -> None:
    for split in store_splits.values():
        for part in (split.train, split.test):
            on_gpu = part.to_device("cuda")
            assert on_gpu.dtype == part.storage_dtype
            assert torch.equal(on_gpu.cpu(), part.to_tensor())


def test_a_store_run_holds_its_splits_on_the_gpu(cli, tmp_path) -> None:
    from probe_lab.store import ActivationStore

    x, y = activation_like(6000, 256, seed=3)
    with ActivationStore.create(tmp_path / "store", 256, dtype="float16", shard_mb=1) as writer:
        writer.append(x, y)
    result = cli("data=store", f"data.path={tmp_path / 'store'}", "backend=auto", "model.size_b=70")
    assert result.returncode == 0, result.stderr
    metrics = result.metrics()
    assert (metrics["device"], metrics["fit"]["optimizer"]) == ("cuda", "lbfgs")
    stages = {"read_seconds", "load_seconds", "fit_seconds", "evaluate_seconds", "write_seconds"}
    assert set(metrics["timings"]) == stages
    assert metrics["test"]["auroc"] > 0.8
    assert "time     read" in result.stdout


def test_a_store_scanned_onto_the_gpu_holds_what_the_host_reads(tmp_path) -> None:
    from probe_lab.store import ActivationStore

    x, y = activation_like(5000, 128, seed=4)
    x[17, 3] = float("nan")
    for dtype in ("float16", "bfloat16"):
        with ActivationStore.create(tmp_path / dtype, 128, dtype=dtype, shard_mb=0.3) as writer:
            writer.append(x, y)
        store = ActivationStore.open(tmp_path / dtype)
        on_host, on_gpu = store.dataset(), store.dataset(device="cuda")
        assert on_gpu.device.type == "cuda" and on_gpu.storage_dtype == on_host.storage_dtype
        rows = np.arange(len(on_host))
        bits = torch.int16  # both 16-bit: compare patterns, since the NaN row equals nothing
        assert torch.equal(on_gpu.read(rows).cpu().view(bits), on_host.read(rows).view(bits))
        np.testing.assert_array_equal(on_gpu.nonfinite_mask(), on_host.nonfinite_mask())
        assert on_gpu.count_nonfinite_rows() == 1


def test_gpu_tensors_train_with_adamw_and_float64_is_held_as_float32(splits) -> None:
    x = torch.from_numpy(splits.train.materialize()).cuda()
    trainer = TorchProbeTrainer(512, ProbeTrainingConfig(device="cuda", optimizer="adamw", learning_rate=0.01))
    trainer.fit_datasets(
        ActivationDataset(x.half(), splits.train.labels),
        ActivationDataset(torch.from_numpy(splits.val.materialize()).cuda().double(), splits.val.labels),
    )
    assert trainer.fit_details["optimizer"] == "adamw"
    assert auroc(splits.test.labels, trainer.decision_function(splits.test)) > 0.8
    assert ActivationDataset(x.double(), splits.train.labels).storage_dtype == torch.float32


@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype feature")
def test_statistics_and_preconditioner_do_not_sync(splits) -> None:
    """The statistics and the preconditioner only queue work on the GPU (no host sync), so they run
    while the Trainer sets up; two fits in a row both converge."""
    from probe_lab.data.stats import device_moments
    from probe_lab.fit.module import ProbeModule
    from probe_lab.settings import OptimizerName

    for _ in range(2):
        assert _fit(splits, device="cuda").fit_details["converged"]
    x = splits.train.to_device("cuda")
    for standardize in (False, True):
        module = ProbeModule.at_best_constant(
            splits.train.dim,
            splits.train.labels,
            [1.0, 100.0],
            optimizer=OptimizerName.lbfgs,
            learning_rate=1e-3,
            max_iterations=10,
        ).cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            mean, std = device_moments(x, sample_rows=None if standardize else 1000)
            module.precondition(mean, std, standardize=standardize)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(module.probe.scale).all()


def _fused_reference(x, y, weight, bias):
    """Σ loss, ∂/∂w, ∂/∂b in float64 of the same (rounded) rows."""
    weight64 = weight.double().requires_grad_()
    bias64 = bias.double().requires_grad_()
    logits = x.double() @ weight64 + bias64
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.double(), reduction="sum")
    loss.backward()
    return loss.detach(), weight64.grad, bias64.grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("rows", "dim"), [(20011, 1000), (3001, 8192), (5, 20000)])
@pytest.mark.parametrize("launch", ["default", "one row per group", "more programs than groups"])
def test_fused_loss_and_gradient_match_float64(dtype: torch.dtype, rows: int, dim: int, launch: str) -> None:
    """One read of the rows gives the loss to float64's sum of float32 row losses and the gradient to
    float32's order of error, for widths and row counts that are no multiple of the blocks, features
    of very different scales, and more programs than groups of rows."""
    from probe_lab.fit import fused_logistic

    torch.manual_seed(dim)
    x = (torch.randn(rows, dim, device="cuda") * torch.logspace(-2, 1.5, dim, device="cuda") + 1.0).to(dtype)
    y = (torch.rand(rows, device="cuda") < 0.3).float()
    weight = torch.randn(dim, device="cuda") * torch.logspace(-3, -1, dim, device="cuda")
    bias = torch.randn(1, device="cuda")
    padded = fused_logistic.launch_shape(x.device, dim).block_dim
    shapes = {
        "default": None,
        "one row per group": fused_logistic.LaunchShape(100, 1, padded),
        "more programs than groups": fused_logistic.LaunchShape(rows, 2, padded),
    }
    loss, grad_weight, grad_bias = fused_logistic.loss_and_gradient(x, y, weight, bias, launch=shapes[launch])
    ref_loss, ref_weight, ref_bias = _fused_reference(x, y, weight, bias)
    assert loss.dtype == torch.float64 and grad_weight.shape == (dim,) and grad_bias.shape == (1,)
    assert abs(float(loss - ref_loss)) <= 1e-6 * float(ref_loss)
    assert float((grad_weight.double() - ref_weight).norm() / ref_weight.norm()) <= 1e-5
    assert abs(float(grad_bias.double() - ref_bias)) <= 1e-5 * float(ref_bias.abs()) + 1e-3


def test_the_objective_reads_half_precision_rows_once_to_float64_accuracy() -> None:
    """ProbeObjective.loss_sum takes the fused path for one probe on float16 rows on the GPU, with the
    loss and gradient of float64 arithmetic (closer than the two products); a regularization path
    keeps the two products."""
    from probe_lab.data.synthetic import activation_like_tensor
    from probe_lab.fit import fused_logistic
    from probe_lab.fit.module import prepared_module
    from probe_lab.settings import OptimizerName

    x, labels = activation_like_tensor(30000, 384, seed=1, device="cuda")
    y = torch.from_numpy(labels).float().cuda()
    train = ActivationDataset(x, labels, name="train")
    assert fused_logistic.applies(x, 1) and not fused_logistic.applies(x, 3)
    assert not fused_logistic.applies(x.float(), 1)
    module = prepared_module(train, [100.0], ProbeTrainingConfig(), OptimizerName.lbfgs, device="cuda", resident=x)
    with torch.no_grad():
        module.probe.linear.weight.normal_(std=0.3)
    weight, bias = module.probe.folded()
    logits = x.double() @ weight.double() + bias.double()
    reference = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.double(), reduction="mean")
    reference.backward()
    expected = module.probe.linear.weight.grad.double().clone()
    for loss_sum, error in ((module.objective.loss_sum, 1e-5), (module.objective.two_product_loss_sum, 1e-3)):
        module.zero_grad()
        loss = loss_sum(module.probe, x, y) / len(x)
        loss.backward()
        assert abs(float(loss) - float(reference)) <= 1e-6 * float(reference)
        # The two products carry the residuals to 2⁻²² of the largest, which cancellation amplifies.
        grad = module.probe.linear.weight.grad.double()
        assert float((grad - expected).norm() / expected.norm()) <= error


@pytest.mark.parametrize("hold_on_host", [True, False])  # page-locked host blocks, or read from the store per pass
def test_blocks_copied_through_two_device_buffers_arrive_intact(store_splits, hold_on_host: bool) -> None:
    """Every pass yields the split's rows in storage order on the GPU, also when each block is copied
    on a side stream into a device buffer that the block before the last was computed on."""
    from probe_lab.data.blocks import SplitBlocks

    train = store_splits["float16"].train
    kept = sum(len(s) for s in train.segments(300)[:2]) * train.dim * 2
    blocks = SplitBlocks(
        train, torch.device("cuda"), read_rows=300, threads=3, hold_on_host=hold_on_host, device_bytes=kept
    )
    assert len(blocks.on_device) == 2 and len(blocks.segments) > 8
    if hold_on_host:
        assert all(block.is_pinned() for block in blocks.host)
    expected = train.read(np.concatenate(blocks.segments)).cuda()
    work = torch.randn(train.dim, 4096, device="cuda")
    for _ in range(2):
        arrived = []
        for x, _ in blocks:
            torch.mm(x.float(), work)  # the GPU is busy with this block while the next ones are copied
            arrived.append(x.clone())
        assert torch.equal(torch.cat(arrived), expected)


def test_cross_validation_on_the_gpu_chooses_as_the_sklearn_backend(splits) -> None:
    """Folds of splits held on the GPU (joined there) choose and refit as the sklearn backend does."""
    from probe_lab.backends.sklearn import SklearnProbeTrainer

    held = [split.on_device("cuda") for split in (splits.train, splits.val)]
    gpu = TorchProbeTrainer(512, ProbeTrainingConfig(device="cuda", precision="32", regularization="auto", cv_folds=3))
    gpu.fit_datasets(*held)
    cpu = SklearnProbeTrainer(512, ProbeTrainingConfig(regularization="auto", cv_folds=3))
    cpu.fit_datasets(splits.train, splits.val)
    means = [[point["cv_auroc_mean"] for point in trainer.regularization_path] for trainer in (gpu, cpu)]
    np.testing.assert_allclose(means[0], means[1], atol=1e-3)
    assert gpu.regularization == cpu.regularization or abs(max(means[0]) - max(means[1])) < 1e-4
    assert cosine(gpu.coef_, cpu.coef_) >= 0.999


@pytest.mark.parametrize("kind", ["mean_difference", "lda"])
def test_class_mean_probes_on_the_gpu_match_the_cpu(splits, kind: str) -> None:
    held = [split.on_device("cuda") for split in (splits.train, splits.val)]
    gpu = TorchProbeTrainer(512, ProbeTrainingConfig(device="cuda", kind=kind))
    gpu.fit_datasets(*held)
    cpu = TorchProbeTrainer(512, ProbeTrainingConfig(device="cpu", kind=kind))
    cpu.fit_datasets(splits.train, splits.val)
    assert cosine(gpu.coef_, cpu.coef_) >= 0.9999
    assert abs(gpu.intercept_ - cpu.intercept_) < 1e-3 * (1 + abs(cpu.intercept_))


@pytest.mark.parametrize(
    "optimizer",
    [("probe.optimizer=lbfgs",), ("probe.optimizer=adamw", "probe.batch_size=1024", "probe.max_iterations=8")],
    ids=["lbfgs", "adamw"],
)
def test_the_same_command_twice_on_the_gpu_gives_the_same_probe(cli, tmp_path, optimizer) -> None:
    """The README's determinism promise on the GPU: with the same seed, a repeated run's probe and metrics
    are bit-identical (README, Reliability), mixed precision included."""
    from test_faults import without_timings

    x, y = activation_like(20000, 512, seed=6)
    np.save(tmp_path / "x.npy", x.astype(np.float16))
    np.save(tmp_path / "y.npy", y)
    data = ("data=npy", f"data.x={tmp_path / 'x.npy'}", f"data.y={tmp_path / 'y.npy'}")
    command = ("backend=pytorch", "device=cuda", *data)
    first, second = cli(*command, *optimizer), cli(*command, *optimizer)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert first.metrics()["device"] == "cuda"
    assert (first.run_dir / "probe.safetensors").read_bytes() == (second.run_dir / "probe.safetensors").read_bytes()
    assert without_timings(first.metrics()) == without_timings(second.metrics())


def test_drawn_rows_are_drawn_on_the_gpu_and_read_the_same_through_the_host() -> None:
    from probe_lab.data.drawn import DRAW_BLOCK_ROWS, DrawnTable

    table = DrawnTable(3 * DRAW_BLOCK_ROWS + 7, 64, seed=5)
    dataset = ActivationDataset(table, table.labels, name="drawn")
    rows = np.sort(np.random.default_rng(0).choice(len(dataset), 5000, replace=False))
    on_gpu = dataset.subset(rows).to_device("cuda")  # drawn there, never through the host
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float16
    through_host = dataset.subset(rows).to_tensor()  # drawn on the GPU too, then copied
    assert through_host.device.type == "cpu"
    assert torch.equal(on_gpu.cpu(), through_host)
