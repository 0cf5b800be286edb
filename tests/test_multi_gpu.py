"""Data-parallel full-batch L-BFGS on several GPUs (NCCL): run where a machine has two or more CUDA
devices, skipped elsewhere. The CPU counterparts, with gloo processes, are in test_data_parallel.py.

Two GPU processes, started by Lightning's launcher or by torchrun, give the probe of one GPU (same
evaluations, cosine ≥ 0.99999), write the run folder once, and do so with each process's shard
resident, or partly held in pinned host memory and copied at every evaluation. NVLink multicast is
kept off in every process (it is not available on every machine with several GPUs).
"""

from __future__ import annotations

import sys

import pytest
import torch
from test_data_parallel import _cosine, _weights

from tests.conftest import run_module

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.multi_gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices"),
]

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# 40,001 rows × 512: 24,000 training rows, 12,000 per GPU; a path of two values.
DATA = ("backend=pytorch", "device=cuda", "data.n=40001", "data.dim=512", "probe.regularization=[1.0,100.0]")


@pytest.fixture(scope="module")
def one_gpu(tmp_path_factory):
    result = run_module("probe_lab", "progress_bar=false", *DATA, run_dir=tmp_path_factory.mktemp("one") / "run")
    assert result.returncode == 0, result.stderr
    return result


def _same_probe(result, one_gpu, processes: int) -> None:
    assert result.returncode == 0, result.stderr
    one, many = one_gpu.metrics(), result.metrics()
    assert many["fit"]["processes"] == processes and many["fit"]["collective_seconds"] > 0
    assert many["fit"]["evaluations"] == one["fit"]["evaluations"]
    assert _cosine(_weights(result.run_dir), _weights(one_gpu.run_dir)) >= 0.99999
    assert abs(many["test"]["auroc"] - one["test"]["auroc"]) <= 1e-4
    for a, b in zip(many["regularization_path"], one["regularization_path"], strict=True):
        assert abs(a["val_auroc"] - b["val_auroc"]) <= 1e-4
    assert result.stdout.count("probe_lab: pytorch backend") == 1
    assert sorted(p.name for p in result.run_dir.glob("*.log")) == ["probe_lab.log"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("extra", "home"),
    [
        ((), "resident"),
        # each process keeps what 10 MB holds of its 24 MB shard on its GPU; the rest is copied from
        # pinned host memory at every evaluation
        (("device.memory_budget_gb=0.01",), "host"),
    ],
)
def test_two_gpus_started_by_lightning_fit_the_probe_of_one(cli, one_gpu, extra, home) -> None:
    result = cli(*DATA, "trainer.devices=2", *extra, env=NO_MULTICAST)
    _same_probe(result, one_gpu, 2)
    assert result.metrics()["placement"]["train"] == home


def test_two_gpus_started_by_torchrun_fit_the_probe_of_one(one_gpu, tmp_path) -> None:
    import os
    import subprocess

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "probe_lab", "progress_bar=false", *DATA, "trainer.devices=2", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=os.environ | NO_MULTICAST
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("probe_lab: pytorch backend") == 1
    assert _cosine(_weights(run_dir), _weights(one_gpu.run_dir)) >= 0.99999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the other process wrote nothing
