"""Each training method on the seed recipe: accuracy with and without it, and what it costs.

    python benchmarks/methods.py [--data-root DIR] [--epochs 5] [--methods ema swa ...] [--seed 0]

Trains the seed article's recipe (MLP 784-500-10, SGD lr 0.1, batch 64, step schedule,
dropout, crop, flip, normalize) on MNIST-format data (60,000 / 10,000; synthetic digits when
no MNIST files are in ``DIR/MNIST/raw``, see seed_recipe.py) once as is and once with each
method added with its defaults, through the real ``hpplug run`` command line. Prints, per
run, the best and last validation accuracy, the test accuracy, epochs trained, and the
training time per update in ms (training only, evaluation excluded) with the method's cost
over the baseline. A benchmark, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_recipe import ensure_data  # noqa: E402

RECIPE = ["--dataset", "mnist", "--lr", "0.1", "--batch-size", "64", "--plugin", "step", "--plugin", "dropout",
          "--dropout.p", "0.5", "--plugin", "crop", "--crop.padding", "4", "--plugin", "flip",
          "--plugin", "normalize", "--normalize.mean", "0.5", "--normalize.std", "0.5"]
METHODS: dict[str, list[str]] = {
    "ema": ["--plugin", "ema"],
    "swa": ["--plugin", "swa", "--swa.start", "0.4"],  # averages the ends of the last 3 of 5 epochs
    "mixup": ["--plugin", "mixup"],
    "cutmix": ["--plugin", "cutmix"],
    "cutout": ["--plugin", "cutout"],
    "grad-clip": ["--plugin", "grad-clip"],
    "early-stopping": ["--plugin", "early-stopping", "--early-stopping.patience", "2"],
    "sam": ["--plugin", "sam"],
}


def train(root: Path, out: Path, epochs: int, seed: int, extra: list[str]) -> dict[str, Any]:
    """One ``hpplug run``; its summary.json."""
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "hpplug", "run", *RECIPE, *extra, "--epochs", str(epochs), "--seed", str(seed),
               "--data-root", str(root), "--output-dir", str(out), "--wandb-mode", "disabled"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HPPLUG_OFFLINE": "1"})
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]}
    (record,) = [p for p in out.iterdir() if (p / "summary.json").is_file()]
    return json.loads((record / "summary.json").read_text())


def row(name: str, s: dict[str, Any], base_ms: float | None) -> str:
    if "error" in s:
        return f"| {name} | failed: {s['error'][:80]} | | | | |"
    ms = 1000 * s["train/time_s"] / s["updates"]
    cost = f"{ms - base_ms:+.2f}" if base_ms is not None else "-"
    return (f"| {name} | {s.get('best/val/accuracy', float('nan')):.4f} | {s.get('val/accuracy', float('nan')):.4f} "
            f"| {s.get('test/accuracy', float('nan')):.4f} | {s['epochs_done']} | {ms:.2f} ({cost}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    args = parser.parse_args()
    root = args.data_root or Path(tempfile.mkdtemp(prefix="hpplug-methods-data-"))
    work = Path(tempfile.mkdtemp(prefix="hpplug-methods-runs-"))
    try:
        print(f"data: {ensure_data(root)}; {args.epochs} epochs, seed {args.seed}, {os.cpu_count()} CPUs",
              flush=True)
        print("| method | best val acc | last val acc | test acc | epochs | ms/update (cost) |\n|---|---|---|---|---|---|",
              flush=True)
        base = train(root, work / "baseline", args.epochs, args.seed, [])
        base_ms = 1000 * base["train/time_s"] / base["updates"] if "error" not in base else None
        print(row("seed recipe", base, None), flush=True)
        for name in args.methods:
            print(row(f"+ {name}", train(root, work / name, args.epochs, args.seed, METHODS[name]), base_ms),
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.data_root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
