"""The transfer matrix: every probe of a transfer run scored on every dataset's test split, the files
it is written to (transfer.csv, transfer.json, transfer.png) and the lines that summarize it."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe_lab import metrics as metrics_lib
from probe_lab.artifacts import write_json
from probe_lab.data.dataset import ActivationDataset
from probe_lab.probe import load_probe
from probe_lab.settings.backend import BackendChoice

TRANSFER_FILES = ("transfer.csv", "transfer.json", "transfer.png")


@dataclass(frozen=True)
class TransferMatrix:
    """Every probe scored on every dataset's test split: `auroc[i][j]` is the probe trained on `names[i]`
    scored on the test split of `names[j]` (likewise `ap`, `accuracy` at the probe's own threshold, and
    `n_test`, the rows scored)."""

    names: list[str]
    auroc: list[list[float]]
    ap: list[list[float]]
    accuracy: list[list[float]]
    n_test: list[list[int]]

    def best_transfer(self) -> tuple[int, int] | None:
        """(trained on, tested on) of the highest off-diagonal AUROC; None for a single dataset."""
        cells = [(i, j) for i in range(len(self.names)) for j in range(len(self.names)) if i != j]
        return max(cells, key=lambda cell: self.auroc[cell[0]][cell[1]]) if cells else None

    def to_dict(self) -> dict[str, Any]:
        """transfer.json's content: the matrices, and the best off-diagonal cell (null for one dataset)."""
        best = self.best_transfer()
        return {
            "names": self.names,
            "rows": "trained on",
            "columns": "tested on",
            "auroc": self.auroc,
            "ap": self.ap,
            "accuracy": self.accuracy,
            "n_test": self.n_test,
            "runs": {name: f"train_{name}" for name in self.names},
            "best_transfer": None
            if best is None
            else {
                "trained_on": self.names[best[0]],
                "tested_on": self.names[best[1]],
                "auroc": self.auroc[best[0]][best[1]],
            },
        }


def score_matrix(names: list[str], probes: list[Path], tests: list[ActivationDataset]) -> TransferMatrix:
    """Each probe file (trained on `names[i]`) scored on each test split, as a run scores its own."""
    rows: dict[str, list[list[float]]] = {"auroc": [], "ap": [], "accuracy": []}
    for path in probes:
        weights, header = load_probe(path)
        threshold = float(header["threshold"])
        scores = [metrics_lib.evaluate(t.labels, weights.predict_proba(t), threshold, with_recall=False) for t in tests]
        for key, row in rows.items():
            row.append([cell[key] for cell in scores])
    n_test = [[len(test) for test in tests] for _ in probes]
    return TransferMatrix(names, rows["auroc"], rows["ap"], rows["accuracy"], n_test)


def write_matrix(folder: Path, matrix: TransferMatrix) -> None:
    """transfer.csv (AUROC, rows trained on, columns tested on, full precision), transfer.json, transfer.png."""
    from probe_lab.report.plots import plot_transfer

    with open(folder / "transfer.csv", "w", newline="") as file:
        table = csv.writer(file)
        table.writerow(["trained_on", *matrix.names])
        table.writerows([name, *row] for name, row in zip(matrix.names, matrix.auroc, strict=True))
    write_json(folder / "transfer.json", matrix.to_dict())
    plot_transfer(folder / "transfer.png", matrix.names, matrix.auroc)


def transfer_lines(matrix: TransferMatrix, choice: BackendChoice, dim: int, out_dir: Path) -> list[str]:
    """The transfer in a few lines: what was trained, the AUROC matrix, the best off-diagonal transfer and
    the files written."""
    names = matrix.names
    width = max(8, *(len(name) + 2 for name in names))
    lines = [
        f"probe_lab.transfer: {len(names)} dataset{'s' if len(names) > 1 else ''} of {dim} dims, "
        f"{choice.name} backend ({choice.reason})",
        "  test AUROC: rows trained on, columns tested on (* the probe's own test split)",
        "  " + " " * width + "".join(f"{name:>{width - 1}} " for name in names),
    ]
    for i, name in enumerate(names):
        cells = "".join(f"{f'{v:.4f}' + ('*' if i == j else ' '):>{width}}" for j, v in enumerate(matrix.auroc[i]))
        lines.append(f"  {name:<{width}}{cells}")
    best = matrix.best_transfer()
    if best is None:
        lines.append("  best     no transfer to compare: one dataset")
    else:
        (i, j), value = best, matrix.auroc[best[0]][best[1]]
        lines.append(
            f"  best     {names[i]} → {names[j]}: AUROC {value:.4f} ({names[j]}'s own probe {matrix.auroc[j][j]:.4f})"
        )
    folders = ", ".join(f"train_{name}/" for name in names)
    lines.append(f"  outputs  {out_dir}: {', '.join(TRANSFER_FILES)}, {folders}")
    return lines
