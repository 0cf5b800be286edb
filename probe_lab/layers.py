"""`data.layer=all`: one probe per layer of N×L×D activations, in one run.

Each layer is a training run of its own (`probe_lab.run.run`) in the run folder's `layer_KK/`, with
its probe, metrics and plots; all use the same split of rows (the seed's), so their metrics compare.

A multi-layer store or .npy array is read once, in one pass, into host memory that every layer's run
reads from, when all its layers fit the host budget (`holds_every_layer`; a store's checksums and
NaN/Inf rows come from that same pass). Otherwise each layer is read on its own from where it is
stored, and a store's checksums are verified once, with the first layer.

The run folder then gets `layers.csv` and `layers.json` (per layer: val and test AUROC and AP, the
folder of its probe; how the layers were read, and the seconds of the one pass) and `layers.png`
(AUROC by layer, validation and test), and the summary ends with the table and the best layer by
validation AUROC.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from probe_lab.artifacts import staged_artifacts, write_json
from probe_lab.data.sources import Source, every_layer_bytes, layer_count, open_source, read_every_layer
from probe_lab.errors import ProbeLabError
from probe_lab.report.run_log import RUN_LOG, print_summary
from probe_lab.settings.data import StoreData
from probe_lab.settings.parallel import Processes
from probe_lab.settings.placement import holds_every_layer
from probe_lab.settings.schema import RunConfig

LAYERS_FILES = ("layers.csv", "layers.json", "layers.png")


def run_every_layer(cfg: DictConfig, out_dir: Path, job_id: str | None, settings: RunConfig) -> Any:
    """Train a probe on each layer into `out_dir/layer_KK/`, then write the layer table and plot."""
    from probe_lab.report.plots import plot_layers
    from probe_lab.run import RunResult, check_runnable, check_width, run

    count = layer_count(settings.data)
    if count is None:
        raise ProbeLabError(f"data.layer=all: data={settings.data.source.value} holds no layer axis (N×D rows)")
    if settings.parity:
        raise ProbeLabError("data.layer=all trains one backend per layer: leave experiment=parity out")
    if getattr(settings.eval.control, "layer", None) is not None:
        raise ProbeLabError(
            "data.layer=all sets each layer's thresholds on that layer of eval.control: leave eval.control.layer unset"
        )
    choice, _ = check_runnable(cfg, settings, job_id)  # refusals that need no data, before the layers are read
    opened = open_source(dataclasses.replace(settings.data, layer=0), settings.seed)  # headers and labels
    check_width(settings.model, opened)
    started = time.perf_counter()
    sources, reading = read_layers(settings, opened)
    read_seconds = time.perf_counter() - started
    # The host budget decided how the layers were read; a sklearn fit has no other use for it, so a
    # layer's run must not name it as a setting without effect.
    device = settings.device
    if choice.name == "sklearn":
        device = dataclasses.replace(device, host_budget_gb=None)
    rows = []
    for layer in range(count):
        verified = layer > 0 and isinstance(settings.data, StoreData)  # checksums already checked
        data = dataclasses.replace(settings.data, layer=layer, **({"verify": False} if verified else {}))
        layer_cfg = cfg.copy()
        with open_dict(layer_cfg):
            layer_cfg.data.layer = layer
        folder = out_dir / f"layer_{layer:02d}"
        source = sources[layer] if sources is not None else None
        result = run(layer_cfg, folder, job_id, dataclasses.replace(settings, data=data, device=device), source=source)
        metrics = result.metrics
        rows.append(
            {
                "layer": layer,
                "val_auroc": metrics["val"]["auroc"],
                "val_ap": metrics["val"]["ap"],
                "test_auroc": metrics["test"]["auroc"],
                "test_ap": metrics["test"]["ap"],
                "probe": str(folder / "probe.safetensors"),
            }
        )
    best = max(rows, key=lambda row: row["val_auroc"])
    with staged_artifacts(out_dir) as staging:
        with open(staging / "layers.csv", "w", newline="") as file:
            table = csv.DictWriter(file, fieldnames=list(rows[0]))
            table.writeheader()
            table.writerows(rows)
        record = {"best_layer": best["layer"], "read": reading, "read_seconds": read_seconds, "layers": rows}
        write_json(staging / "layers.json", record)
        plot_layers(staging / "layers.png", rows, best["layer"])
    print_summary(layer_lines(rows, best, out_dir, reading))
    return RunResult(out_dir, {"layers": rows, "best_layer": best["layer"], "read": reading}, best["val_auroc"])


def read_layers(settings: RunConfig, opened: Source) -> tuple[list[Source] | None, str]:
    """Every layer of `opened` (`settings.data`, opened) read in one pass into host memory, as one
    source per layer, when the placement says they fit (`holds_every_layer`); else None, and each
    layer's run reads its own. With a line that says which, for the log, layers.json and the summary."""
    nbytes = every_layer_bytes(opened, settings.data)
    # the processes of a data-parallel fit on one node each run this, and share its RAM
    share = Processes.from_trainer_flags(settings.trainer).devices
    budget = settings.device.host_budget_gb
    if nbytes is None:
        reading = "each layer read on its own (per-sample tensor files)"
    elif not holds_every_layer(nbytes, budget, share=share):
        limit = "half the free RAM" if budget is None else f"device.host_budget_gb={budget:g}"
        per_process = f" per process of {share}" if share > 1 else ""
        reading = f"each layer read on its own: all layers ({nbytes / 1e9:.3g} GB) exceed {limit}{per_process}"
    else:
        started = time.perf_counter()
        sources = read_every_layer(opened, settings.data, progress=settings.progress_bar)
        reading = f"one pass over every layer ({nbytes / 1e9:.3g} GB) into host memory"
        RUN_LOG.info("layers   %s, in %.2f s", reading, time.perf_counter() - started)
        return sources, reading
    RUN_LOG.info("layers   %s", reading)
    return None, reading


def layer_lines(rows: list[dict[str, Any]], best: dict[str, Any], out_dir: Path, reading: str) -> list[str]:
    lines = [f"probe_lab: one probe per layer ({len(rows)} layers; {reading})", "  layer  val AUROC  test AUROC"]
    for row in rows:
        mark = "  ← best (validation)" if row is best else ""
        lines.append(f"  {row['layer']:>5}  {row['val_auroc']:.4f}     {row['test_auroc']:.4f}{mark}")
    lines.append(f"  outputs  {out_dir}: layer_KK/ (each layer's run), {', '.join(LAYERS_FILES)}")
    return lines
