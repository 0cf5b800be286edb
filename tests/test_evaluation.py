"""Judging a probe: thresholds at a false-positive rate (on a control set or the validation negatives),
predict at such a threshold, the shuffled-label and random-direction controls, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_here

from probe_lab.data.dataset import ActivationDataset
from probe_lab.data.splits import split_dataset
from probe_lab.data.synthetic import activation_like
from probe_lab.probe import load_probe
from probe_lab.thresholds import threshold_at_fpr


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.001, 0.5])
def test_a_threshold_flags_at_most_the_target_share_of_negatives_and_is_the_lowest_that_does(rate) -> None:
    scores = np.round(np.random.default_rng(0).normal(size=2000), 2)  # many ties
    at_rate = threshold_at_fpr(scores, rate, "control")
    flagged = np.mean(scores >= at_rate.logit)
    assert flagged <= rate and at_rate.reached_fpr == flagged
    lower = np.max(scores[scores < at_rate.logit])  # the next threshold down flags one more score at least
    assert np.mean(scores >= lower) > rate


def test_too_few_negatives_allow_no_false_positive() -> None:
    at_rate = threshold_at_fpr(np.array([0.1, 0.5, -2.0]), 0.01, "validation negatives")
    assert at_rate.logit > 0.5 and at_rate.reached_fpr == 0.0


@pytest.fixture
def signal_files(tmp_path):
    """x.npy (N, 2 layers, 16) with signal in layer 1 (layer 0: noise), y.npy, and negatives.npy: 3000
    further negative rows of the same distribution, both layers."""
    x, y = activation_like(2400, 16, seed=11, signal=1.5)
    more_x, more_y = activation_like(6000, 16, seed=12, signal=1.5)
    noise = np.random.default_rng(0).normal(size=(8400, 16)).astype(np.float32) * 40
    paths = {name: tmp_path / f"{name}.npy" for name in ("x", "y", "negatives")}
    np.save(paths["x"], np.stack([noise[:2400], x], axis=1))
    np.save(paths["y"], y)
    np.save(paths["negatives"], np.stack([noise[2400:5400], more_x[more_y == 0][:3000]], axis=1))
    return paths


def test_a_run_sets_thresholds_on_its_control_set_and_predict_applies_them(cli, signal_files, tmp_path) -> None:
    # The training run in this process (`run_here`: its metrics, files and printed summary); predict below
    # on the command line.
    result = run_here(
        "data=npy",
        f"data.x={signal_files['x']}",
        f"data.y={signal_files['y']}",
        "data.layer=1",  # the control's layer too, as it names none
        f"eval.control={{source:npy,x:{signal_files['negatives']}}}",
        "eval.target_fpr=[0.01,0.05]",
        "eval.controls=true",
        run_dir=tmp_path / "train",
    )
    metrics = result.metrics()
    control = np.load(signal_files["negatives"])[:, 1]
    weights, _ = load_probe(result.run_dir / "probe.safetensors")
    control_logits = weights.decision_function(control)
    for point in metrics["thresholds"]:
        assert point["source"] == "eval.control negatives" and point["negatives"] == 3000
        reached = float(np.mean(control_logits >= point["logit"]))
        assert reached <= point["target_fpr"] and reached == pytest.approx(point["reached_fpr"])
        assert 0.0 < point["test_recall"] < 1.0 and point["test_fpr"] < 3 * point["target_fpr"] + 0.02
    assert "at FPR   0.01: threshold" in result.stdout and "on 3000 eval.control negatives" in result.stdout
    stored = result.probe_json()["thresholds"]
    assert [point["target_fpr"] for point in stored] == [0.01, 0.05]

    controls = metrics["controls"]
    assert metrics["test"]["auroc"] > 0.8
    assert abs(controls["shuffled_labels"]["test_auroc"] - 0.5) < 0.1
    assert controls["selectivity"] == pytest.approx(
        metrics["test"]["auroc"] - controls["shuffled_labels"]["test_auroc"]
    )
    assert "selectivity" in result.stdout

    intervals = metrics["test_intervals"]
    for name in ("auroc", "ap", "recall_at_1pct_fpr"):
        assert intervals[name]["low"] <= metrics["test"][name] <= intervals[name]["high"]
    assert f"AUROC {metrics['test']['auroc']:.4f} [" in result.stdout

    scored = cli(
        "at_fpr=0.05",
        f"probe={result.run_dir}",
        f"data.x={signal_files['negatives']}",
        "data.layer=1",
        module="probe_lab.predict",
    )
    assert scored.returncode == 0, scored.stderr
    rows = np.loadtxt(scored.run_dir / "scores.csv", delimiter=",", skiprows=1)
    logit = stored[1]["logit"]
    np.testing.assert_array_equal(rows[:, 3], (control_logits >= logit).astype(float))
    assert rows[:, 3].mean() <= 0.05 and "at_fpr=0.05, set on the run's eval.control negatives" in scored.stdout
    refused = cli(
        "at_fpr=0.2",
        f"probe={result.run_dir}",
        f"data.x={signal_files['negatives']}",
        "data.layer=1",
        module="probe_lab.predict",
    )
    assert refused.returncode != 0 and "false-positive rates 0.01, 0.05" in refused.stderr


def test_without_a_control_set_the_validation_negatives_set_the_thresholds(npy_data, tmp_path) -> None:
    """The run's thresholds, metrics and printed summary (run in this process)."""
    x, y = npy_data
    result = run_here(
        "data=npy",
        f"data.x={x}",
        f"data.y={y}",
        "probe.cv_folds=3",
        "probe.regularization=[1,100]",
        "eval.bootstrap_resamples=0",
        run_dir=tmp_path / "run",
    )
    metrics = result.metrics()
    assert {point["source"] for point in metrics["thresholds"]} == {"out-of-fold validation negatives"}
    splits = split_dataset(ActivationDataset(np.load(x), np.load(y)), 0.2, 0.2, seed=42)
    assert metrics["thresholds"][0]["negatives"] == int(np.sum(splits.val.labels == 0))
    assert "test_intervals" not in metrics
    assert "too few to resolve it" in result.stdout  # 0.1% of ~60 validation negatives
    assert "3-fold stratified" in result.stdout and "CV AUROC" in result.stdout
    assert (result.run_dir / "regularization_path.png").stat().st_size > 0


def test_a_control_set_holding_positives_is_refused(cli, npy_data) -> None:
    x, y = npy_data
    result = cli("data=npy", f"data.x={x}", f"data.y={y}", f"eval.control={{source:npy,x:{x},y:{y}}}")
    assert result.returncode != 0
    assert "eval.control" in result.stderr and "positive rows" in result.stderr
    assert not (result.run_dir / "metrics.json").exists()


def test_a_missing_control_file_is_named_as_the_eval_control_setting(cli, npy_data, tmp_path) -> None:
    x, y = npy_data
    result = cli("data=npy", f"data.x={x}", f"data.y={y}", f"eval.control={{source:npy,x:{tmp_path / 'nope.npy'}}}")
    assert result.returncode != 0
    assert "eval.control.x" in result.stderr and "data.x" not in result.stderr
