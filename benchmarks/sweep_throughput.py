"""Trials per hour of whole sweeps: packed trials against one process per trial.

    python benchmarks/sweep_throughput.py [--scenario a b c] [--pack 12] [--baseline-parallel 2]
                                          [--wandb offline] [--data-root DIR]

Each scenario is one W&B sweep YAML run twice by the real command line, as a user runs it:

- ``hpplug sweep FILE --parallel 2`` (one process per trial, two at a time: today's way
  on a 2-core machine), and
- ``hpplug sweep FILE --pack K`` (up to K trials trained as one vectorized model).

Scenarios (issue 13):
  a. the seed article's grid (``sweeps/seed-grid.yaml``: step or cosine x 3 LRs x 2 dropout
     p = 12 trials, 20 epochs) on ``digits``;
  b. the same grid on MNIST-format data (60,000 / 10,000 images, 3 epochs): real MNIST files
     in ``DIR/MNIST/raw`` are used as they are, else synthetic ones are written there;
  c. a 32-trial random sweep on ``digits`` (10 epochs) over what a pack shares between
     members: LR, momentum, schedule, dropout p, weight decay, label smoothing and seed.

It prints, per scenario and side: wall time of the whole ``hpplug sweep`` process, trials
finished, trials per hour, the best validation accuracy, and the largest difference of one
trial's validation accuracy between the two sides (the trials are the same: a grid, or the
same seed of the random engine). A benchmark, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from seed_recipe import ensure_data  # noqa: E402  (one definition of the MNIST-format files)

RANDOM_DIGITS = {
    "method": "random", "run_cap": 32,
    "metric": {"name": "val/accuracy", "goal": "maximize"},
    "parameters": {
        "dataset": {"value": "digits"}, "epochs": {"value": 10},
        "lr": {"distribution": "log_uniform_values", "min": 0.005, "max": 0.5},
        "momentum": {"distribution": "uniform", "min": 0.0, "max": 0.95},
        "plugin": {"values": [["cosine", "dropout", "weight-decay", "label-smoothing"],
                              ["onecycle", "dropout", "weight-decay", "label-smoothing"],
                              ["step", "dropout", "weight-decay", "label-smoothing"]]},
        "dropout.p": {"distribution": "uniform", "min": 0.0, "max": 0.6},
        "weight-decay.weight_decay": {"distribution": "log_uniform_values", "min": 1.0e-6, "max": 1.0e-2},
        "label-smoothing.smoothing": {"distribution": "uniform", "min": 0.0, "max": 0.2},
        "seed": {"values": [0, 1, 2, 3]},
    },
}


def scenario_yaml(name: str, data_root: Path | None) -> dict[str, Any]:
    """The sweep YAML of scenario ``name`` (a, b or c), with hpplug's own command."""
    if name == "c":
        spec = json.loads(json.dumps(RANDOM_DIGITS))
    else:
        spec = yaml.safe_load((REPO / "sweeps" / "seed-grid.yaml").read_text())
        spec["parameters"]["dataset"] = {"value": "digits" if name == "a" else "mnist"}
        if name == "b":
            spec["parameters"]["epochs"] = {"value": 3}
            spec["parameters"]["step.step_size"] = {"value": 2}
            spec["parameters"]["data_root"] = {"value": str(data_root)}
    spec["command"] = ["${env}", "hpplug", "run", "${args}"]
    spec.pop("project", None)
    return spec


def run_sweep(spec: dict[str, Any], folder: Path, extra: list[str], mode: str) -> dict[str, Any]:
    """Run one whole sweep process; its wall time and the trials' results."""
    folder.mkdir(parents=True)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    hpplug = Path(sys.executable).parent / "hpplug"
    argv = [str(hpplug if hpplug.exists() else "hpplug"), "sweep", str(path), "--dir", str(folder / "out"),
            "--wandb-mode", mode, "--seed", "benchmark", *extra]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    summary_path = folder / "out" / "summary.json"
    trials = json.loads(summary_path.read_text())["trials"] if summary_path.exists() else []
    if done.returncode != 0:
        print(f"  ! {' '.join(argv[1:])} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    finished = [t for t in trials if t.get("status") in ("finished", "stopped")]
    metrics = {json.dumps(t["values"], sort_keys=True): t["metric"] for t in finished}
    return {"wall": wall, "finished": len(finished), "metrics": metrics}


def show(scenario: str, results: dict[str, dict[str, Any]]) -> None:
    for side, r in results.items():
        per_hour = r["finished"] / r["wall"] * 3600 if r["wall"] else 0.0
        best = max((m for m in r["metrics"].values() if m is not None), default=float("nan"))
        print(f"  {side:<22} {r['wall']:7.1f} s  {r['finished']:3d} trials  {per_hour:8,.0f} trials/h  "
              f"best val/accuracy {best:.4f}")
    if len(results) < 2:
        return
    base, packed = results["one process per trial"], results["packed"]
    common = [k for k in base["metrics"] if k in packed["metrics"]
              and None not in (base["metrics"][k], packed["metrics"][k])]
    diff = max((abs(base["metrics"][k] - packed["metrics"][k]) for k in common), default=float("nan"))
    speedup = (packed["finished"] / packed["wall"]) / (base["finished"] / base["wall"]) \
        if base["finished"] and packed["wall"] else float("nan")
    print(f"  => {speedup:.2f}x trials/hour; largest val/accuracy difference of one trial: {diff:.4f} "
          f"({len(common)} trials on both sides)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--pack", type=int, default=12, help="K of --pack (default 12)")
    parser.add_argument("--pack-parallel", type=int, default=1, help="--parallel of the packed side")
    parser.add_argument("--baseline-parallel", type=int, default=2, help="--parallel of one process per trial")
    parser.add_argument("--sides", nargs="+", default=["one process per trial", "packed"],
                        choices=["one process per trial", "packed"], help="run only these sides")
    parser.add_argument("--wandb", default="offline", choices=("offline", "disabled"))
    parser.add_argument("--data-root", type=Path, help="folder holding MNIST/raw for scenario b "
                        "(default: a temporary folder with synthetic MNIST-format digits)")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"W&B {args.wandb}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or Path(tmp) / "data"
        if "b" in args.scenario:
            print(ensure_data(root))
        sides = {"one process per trial": ["--parallel", str(args.baseline_parallel)],
                 "packed": ["--pack", str(args.pack), "--parallel", str(args.pack_parallel)]}
        sides = {side: extra for side, extra in sides.items() if side in args.sides}
        for scenario in args.scenario:
            spec = scenario_yaml(scenario, root)
            print(f"scenario {scenario}:")
            results = {side: run_sweep(spec, Path(tmp) / f"{scenario}-{i}", extra, args.wandb)
                       for i, (side, extra) in enumerate(sides.items())}
            show(scenario, results)
            for i in range(len(sides)):
                shutil.rmtree(Path(tmp) / f"{scenario}-{i}", ignore_errors=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
