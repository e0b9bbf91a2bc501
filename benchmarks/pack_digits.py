"""Packed trials against the same trials one after another, in one process, on ``digits``.

    python benchmarks/pack_digits.py [--trials 8] [--epochs 10] [--threads 0] [--wandb offline]

The seed recipe's MLP (784-500-10 on 8x8 digits: 64-500-10), SGD, batch 64, trials from the
seed grid (step or cosine schedule x LR x dropout p, as sweeps/seed-grid.yaml). Prints, for
``hpplug.pack.run_pack`` and for ``engine.run`` called once per trial: wall time, training
samples per second over all trials (whole runs: set-up, evaluation, records, W&B), the
training-only samples/s the runs report, and the largest difference in test accuracy.
A benchmark, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import torch

from hpplug import discovery, engine
from hpplug.pack import run_pack
from hpplug.run_args import build_config


def trials(out: Path, count: int, epochs: int, mode: str) -> list:
    grid = itertools.product(["step", "cosine"], [0.01, 0.05, 0.1], [0.2, 0.5])
    catalog, specs = discovery.discover(), []
    for i, (schedule, lr, p) in enumerate(itertools.islice(itertools.cycle(grid), count)):
        core = {"epochs": epochs, "lr": lr, "wandb_mode": mode, "output_dir": str(out), "seed": i}
        params = {"dropout": {"p": p}, "step": {"step_size": max(1, epochs // 2)}} if schedule == "step" else \
            {"dropout": {"p": p}}
        config, entries = build_config(catalog, [schedule, "dropout"], params, core)
        specs.append((config, entries, f"t{i}", None))
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--wandb", default="offline", choices=("offline", "disabled"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        # Imports and caches once (W&B's first run imports much), for neither side to pay.
        engine.run(*trials(Path(tmp) / "warm", 1, 1, args.wandb)[0][:2], show_progress=False)
        results = {}
        for name in ("pack", "alone"):
            specs = trials(Path(tmp) / name, args.trials, args.epochs, args.wandb)
            start = time.perf_counter()
            if name == "pack":
                runs = run_pack(specs)
            else:
                runs = []
                for config, entries, run_id, _ in specs:
                    os.environ["WANDB_RUN_ID"] = run_id
                    runs.append(engine.run(config, entries, show_progress=False))
                os.environ.pop("WANDB_RUN_ID", None)
            wall = time.perf_counter() - start
            samples = sum(r.summary["train/samples_per_s"] * r.summary["train/time_s"] for r in runs)
            # A packed member's training time is the pack's: all of them trained in it at once.
            train_time = max(r.summary["train/time_s"] for r in runs) if name == "pack" else \
                sum(r.summary["train/time_s"] for r in runs)
            results[name] = runs
            print(f"{name:5}  {args.trials} trials x {args.epochs} epochs: {wall:6.1f} s wall, "
                  f"{samples / wall:8,.0f} samples/s whole runs, {samples / train_time:8,.0f} samples/s training, "
                  f"statuses {sorted({r.status for r in runs})}")
        gap = max(abs(a.summary["test/accuracy"] - b.summary["test/accuracy"])
                  for a, b in zip(results["pack"], results["alone"]))
        print(f"largest test-accuracy difference between a packed trial and the same trial alone: {gap:.4f}")


if __name__ == "__main__":
    main()
