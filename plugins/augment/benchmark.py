"""Time crop, flip, normalize, mixup, cutmix and cutout per batch against torchvision's transforms.

    python plugins/augment/benchmark.py [--device cuda] [--shape 64,1,28,28] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from hpplug import Batch, Progress
from hpplug_augment.crop import Crop
from hpplug_augment.cutmix import CutMix
from hpplug_augment.cutout import Cutout
from hpplug_augment.flip import Flip
from hpplug_augment.mixup import Mixup
from hpplug_augment.normalize import Normalize


def per_batch_ms(fn, repeat: int, device: torch.device, blocks: int = 7) -> float:
    """Best block's mean time per call (like timeit: the minimum is the least disturbed)."""
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(blocks):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / repeat * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="64,1,28,28")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = tuple(int(s) for s in args.shape.split(","))
    x = torch.rand(shape, device=device)
    y = torch.zeros(shape[0], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    progress = Progress(update=0, epoch=0, updates_per_epoch=1, epochs=1)

    def hook(plugin):
        return lambda: plugin.hpplug_transform_batch(Batch(x, y, True, gen, num_classes=10), progress)

    crop, flip, norm = Crop(padding=4), Flip(p=0.5), Normalize()

    def chain(batch: Batch) -> None:
        for plugin in (crop, flip, norm):
            plugin.hpplug_transform_batch(batch, progress)
    timings = {
        "crop": hook(crop),
        "flip": hook(flip),
        "normalize": hook(norm),
        "crop+flip+normalize": lambda: chain(Batch(x, y, True, gen)),
        "mixup": hook(Mixup()),
        "cutmix": hook(CutMix()),
        "cutout": hook(Cutout()),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, batch {list(shape)}")
    for name, fn in timings.items():
        print(f"{name:>22}: {per_batch_ms(fn, args.repeat, device):.3f} ms/batch")
    try:
        from torchvision import transforms as T
    except ImportError:
        return
    if device.type == "cpu":
        tv = T.Compose([T.RandomCrop(shape[-1], padding=4), T.RandomHorizontalFlip(), T.Normalize((0.5,), (0.5,))])
        ms = per_batch_ms(lambda: torch.stack([tv(img) for img in x]), max(args.repeat // 10, 20), device)
        print(f"{'torchvision per image':>22}: {ms:.3f} ms/batch (tensor input, no PIL, no ToTensor)")
    try:
        from torchvision.transforms import v2
    except ImportError:
        return
    side = round(0.5 * min(shape[-2:]))  # cutout's default square, as RandomErasing's fixed area
    erase = v2.RandomErasing(p=1.0, scale=(side * side / (shape[-2] * shape[-1]),) * 2, ratio=(1.0, 1.0))
    batched = {"v2.MixUp(alpha=0.2)": v2.MixUp(alpha=0.2, num_classes=10),
               "v2.CutMix(alpha=1)": v2.CutMix(alpha=1.0, num_classes=10)}
    for name, tv in batched.items():
        print(f"{name:>22}: {per_batch_ms(lambda: tv(x, y), args.repeat, device):.3f} ms/batch (global RNG)")
    ms = per_batch_ms(lambda: torch.stack([erase(img) for img in x]), max(args.repeat // 10, 20), device)
    print(f"{'v2.RandomErasing/image':>22}: {ms:.3f} ms/batch (cutout's square, per image)")


if __name__ == "__main__":
    main()
