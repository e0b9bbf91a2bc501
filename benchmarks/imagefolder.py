"""Streaming an ImageFolder: hpplug's DataLoader path against a hand-written torchvision loop.

    python benchmarks/imagefolder.py [--images 20000] [--epochs 2] [--workers 2] [--dir DIR]

Writes ``--images`` small PNGs (28x28 synthetic digits, 10 classes, ``train/<class>/`` plus a
test split of a tenth of that) unless ``--dir`` already holds them, then trains the same MLP
(784-500-10, SGD lr 0.1, batch 64) with the same augmentation (RandomCrop(28, padding=4),
Normalize(0.5, 0.5)) twice, with the same number of DataLoader workers:

- **hand-written**: ``torchvision.datasets.ImageFolder`` with PIL transforms per sample and
  ``DataLoader(shuffle=True, num_workers=W)``, the way most training scripts read folders;
- **hpplug**: ``hpplug run --dataset imagefolder --loader stream --workers W --plugin crop
  --plugin normalize --val-fraction 0`` (decoding in the workers, augmentation batched after
  the transfer), read back from the run's ``summary.json``; then the same with
  ``--loader memory`` (the folder decoded once, then the in-memory fast path).

Prints training samples/s (training time only) and test accuracy side by side. A benchmark,
not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from hpplug.idx import synthetic_digits


def write_folder(root: Path, n_train: int) -> None:
    from torchvision.io import write_png

    for split, n, seed in (("train", n_train, 0), ("test", max(n_train // 10, 10), 1)):
        if (root / split).is_dir():
            continue
        x, y = synthetic_digits(n, seed=seed, split=split)
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(torch.as_tensor(x), torch.as_tensor(y).tolist())):
            write_png(img.unsqueeze(0), str(root / split / str(label) / f"{i:06d}.png"))


def hand_written(root: Path, epochs: int, workers: int, seed: int) -> tuple[float, float]:
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    gray = transforms.Grayscale(1)
    train_tf = transforms.Compose([gray, transforms.RandomCrop(28, padding=4), transforms.ToTensor(),
                                   transforms.Normalize((0.5,), (0.5,))])
    test_tf = transforms.Compose([gray, transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train = torch.utils.data.DataLoader(datasets.ImageFolder(str(root / "train"), train_tf), batch_size=64,
                                        shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    test = torch.utils.data.DataLoader(datasets.ImageFolder(str(root / "test"), test_tf), batch_size=1000,
                                       num_workers=workers)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen, elapsed = 0, 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            seen += len(y)
        elapsed += time.perf_counter() - start
    correct = total = 0
    with torch.no_grad():
        for x, y in test:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return seen / elapsed, correct / total


def through_hpplug(root: Path, epochs: int, workers: int, seed: int, out: Path,
                   loader: str = "stream") -> tuple[float, float]:
    cmd = [sys.executable, "-m", "hpplug", "run", "--dataset", "imagefolder", "--data-root", str(root),
           "--imagefolder.channels", "1", "--imagefolder.size", "0", "--loader", loader,
           "--workers", str(workers), "--val-fraction", "0", "--plugin", "crop", "--plugin", "normalize",
           "--epochs", str(epochs), "--seed", str(seed), "--wandb-mode", "disabled", "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        return float("nan"), float("nan")
    (record,) = [p for p in out.iterdir() if p.is_dir()]
    summary = json.loads((record / "summary.json").read_text())
    return summary["train/samples_per_s"], summary["test/accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where the PNGs are (written if missing)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "folder"
        start = time.perf_counter()
        write_folder(root, args.images)
        print(f"ImageFolder of {args.images:,} PNGs in {root} ({time.perf_counter() - start:.0f} s to write)")
        print(f"{os.cpu_count()} cores, torch {torch.__version__}, {args.workers} workers, {args.epochs} epochs")
        hand = hand_written(root, args.epochs, args.workers, args.seed)
        ours = through_hpplug(root, args.epochs, args.workers, args.seed, Path(tmp) / "stream")
        held = through_hpplug(root, args.epochs, args.workers, args.seed, Path(tmp) / "memory", loader="memory")
    print(f"{'':14}{'samples/s':>12}{'test acc':>10}")
    print(f"{'hand-written':14}{hand[0]:>12,.0f}{hand[1]:>10.4f}")
    print(f"{'hpplug stream':14}{ours[0]:>12,.0f}{ours[1]:>10.4f}")
    print(f"{'hpplug memory':14}{held[0]:>12,.0f}{held[1]:>10.4f}   (read once, then batched on the device)")
    print(f"streaming: {ours[0] / hand[0]:.2f}x the hand-written loop (target >= 1.0x)")


if __name__ == "__main__":
    main()
