"""Where the wall time of `python -m probe_lab` goes: whole commands, and the imports inside them.

    python benchmarks/startup.py [--repeats 3]

Times, in fresh processes, `--help`, a setting refused at composition, a data file that is not there,
the default run (sklearn) and the same run with backend=pytorch, and prints each run's own stages
(metrics.json's timings) beside its wall time; then the cumulative import time of the libraries a
run loads (`python -X importtime`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "--help": ["--help"],
    "refused setting (probe.regularization=-1)": ["probe.regularization=-1"],
    "missing data file (data=npy data.x=absent.npy)": ["data=npy", "data.x=absent.npy"],
    "default run (sklearn)": [],
    "backend=pytorch": ["backend=pytorch"],
}
LIBRARIES = ("hydra", "torch", "sklearn", "scipy", "matplotlib", "lightning", "torchmetrics")


def timed(arguments: list[str], run_dir: Path) -> tuple[float, dict[str, float]]:
    command = [sys.executable, "-m", "probe_lab", "progress_bar=false", *arguments, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    metrics = run_dir / "metrics.json"
    stages = json.loads(metrics.read_text())["timings"] if metrics.is_file() else {}
    return wall, stages


def import_times(arguments: list[str], run_dir: Path) -> dict[str, float]:
    """Cumulative seconds of each library's first import in one run."""
    command = [sys.executable, "-X", "importtime", "-m", "probe_lab", "progress_bar=false", *arguments]
    done = subprocess.run([*command, f"hydra.run.dir={run_dir}"], capture_output=True, text=True, check=False)
    found: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)$", line)
        if match and match.group(3) in LIBRARIES and match.group(3) not in found:
            found[match.group(3)] = int(match.group(1)) / 1e6
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        print("| command | wall s (median) | the run's own stages s |")
        print("| --- | ---: | ---: |")
        for name, arguments in COMMANDS.items():
            runs = [timed(arguments, Path(scratch) / f"{name[:4]}{i}") for i in range(args.repeats)]
            wall = statistics.median(run[0] for run in runs)
            stages = sum(runs[-1][1].values())
            print(f"| {name} | {wall:.2f} | {stages:.2f} |" if stages else f"| {name} | {wall:.2f} | |")
        print()
        print("| library | import s, default run | import s, backend=pytorch |")
        print("| --- | ---: | ---: |")
        default, pytorch = (import_times(a, Path(scratch) / f"imp{i}") for i, a in enumerate(([], ["backend=pytorch"])))
        for library in LIBRARIES:
            cells = [f"{found[library]:.2f}" if library in found else "not imported" for found in (default, pytorch)]
            print(f"| {library} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
