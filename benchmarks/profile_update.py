"""Where one hpplug update's time goes: the engine's own loop, instrumented from outside.

    python benchmarks/profile_update.py [--data-root DIR] [--threads N] [--epochs 1]
        [--plugins step,dropout,crop,flip,normalize]

Builds a run exactly as ``hpplug run --dataset mnist`` does (same config, plugins, Accelerator,
``engine.prepare``) and runs ``hpplug.loop.train_epoch`` with timers wrapped around each part: every
plugin's hook implementation, the model's forward, the loss, Accelerate's ``backward`` and
optimizer wrappers (with the plain torch calls inside them timed separately), logging. What
is left is the engine's own per-update code (indexing, seeding, moving, metric sums). Then
the same model, optimizer and augmentation as a bare tensor loop, for the floor.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from hpplug import discovery, engine, manager
from hpplug import loop as training
from hpplug.console import EpochBar
from hpplug.run_args import build_config
from hpplug.tracking import Tracker

TIMES: dict[str, float] = defaultdict(float)
CLOCK = time.perf_counter  # --clock cpu: time.process_time, robust to other processes on the machine
CALLS: dict[str, int] = defaultdict(int)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = CLOCK()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += CLOCK() - start
            CALLS[name] += 1
    return wrapper


def instrument(loop: training.Loop) -> None:
    """Wrap every part of an update that can be reached from outside the engine."""
    for hook in ("hpplug_lr_factor", "hpplug_transform_batch", "hpplug_loss",
                 "hpplug_before_optimizer_step", "hpplug_after_optimizer_step"):
        caller = getattr(loop.hook, hook)
        for impl in caller.get_hookimpls():  # each plugin's implementation on its own
            impl.function = timed(f"  plugin {impl.plugin_name.split(':')[0]}.{hook[7:]}", impl.function)
        setattr(loop.hook, hook, timed(f"hook call {hook[7:]} (pluggy + plugins)", caller))
    loop.data.train.inputs = timed("uint8 -> float /255 (source.inputs)", loop.data.train.inputs)  # type: ignore[method-assign]

    def start_forward(*_: Any) -> None:
        start_forward.t = CLOCK()  # type: ignore[attr-defined]

    def end_forward(*_: Any) -> None:
        TIMES["model forward"] += CLOCK() - start_forward.t  # type: ignore[attr-defined]
        CALLS["model forward"] += 1

    loop.model.register_forward_pre_hook(start_forward)
    loop.model.register_forward_hook(end_forward)
    F.cross_entropy = timed("cross_entropy", F.cross_entropy)  # engine calls it through F
    acc, opt = loop.accelerator, loop.optimizer
    acc.backward = timed("accelerator.backward (wrapper + autograd)", acc.backward)  # type: ignore[method-assign]
    torch.Tensor.backward = timed("  autograd backward", torch.Tensor.backward)  # type: ignore[method-assign]
    opt.step = timed("AcceleratedOptimizer.step (wrapper + SGD)", opt.step)  # type: ignore[method-assign]
    inner = getattr(opt, "optimizer", None)
    if inner is not None:
        inner.step = timed("  torch SGD.step", inner.step)  # type: ignore[method-assign]
    opt.zero_grad = timed("optimizer.zero_grad", opt.zero_grad)  # type: ignore[method-assign]
    training.set_lr = timed("set_lr (incl. lr_factor hook)", training.set_lr)
    training._mean = timed("log window reduce (.tolist sync)", training._mean)
    training._check_stop = timed("stop check", training._check_stop)
    loop.tracker.log = timed("tracker.log (jsonl record)", loop.tracker.log)  # type: ignore[method-assign]
    training.train_update = timed("train_update (all of it)", training.train_update)


def build(data_root: Path, plugins: list[str], raw: dict[str, dict[str, Any]], epochs: int,
          out: Path) -> training.Loop:
    config, entries = build_config(discovery.discover(), plugins, raw, {
        "dataset": "mnist", "val_fraction": 0.0, "data_root": str(data_root), "epochs": epochs, "seed": 0,
        "wandb_mode": "disabled", "output_dir": str(out)})
    accelerator = engine.make_accelerator(config, tracking=False)
    tracker = Tracker(accelerator, "disabled", "profile", out)
    tracker.start(config.project, {})
    pm, instances = manager.build(entries, config.plugin_params)
    return engine.prepare(config, pm, instances, accelerator, tracker, download=False)


def bare_loop(loop: training.Loop, augment: bool) -> float:
    """Samples/s of the same model and SGD on the same tensors, with nothing around it."""
    data, model, opt = loop.data.train, loop.model, loop.optimizer.optimizer
    order = torch.randperm(len(data.y))
    g = torch.Generator().manual_seed(0)
    n = len(order) // 64
    start = CLOCK()
    for u in range(n):
        idx = order[u * 64:(u + 1) * 64]
        x = data.x[idx].float().div_(255)
        if augment:  # per-sample crop (pad 4) and flip by advanced indexing
            pad = F.pad(x, (4, 4, 4, 4))
            t, l_ = torch.randint(0, 9, (2, 64), generator=g)
            rows = (t[:, None] + torch.arange(28))[:, :, None]
            cols = (l_[:, None] + torch.arange(28))[:, None, :]
            flip = torch.rand(64, generator=g) < 0.5
            cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
            x = pad[torch.arange(64)[:, None, None], 0, rows, cols].unsqueeze(1).sub_(0.5).div_(0.5)
        loss = torch.nn.functional.cross_entropy(model(x), data.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n * 64 / (CLOCK() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding MNIST/raw")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--plugins", default="step,dropout,crop,flip,normalize")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time, meaningful with --threads 1 on a busy machine")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.plugins.split(",") if n]
    raw = {"step": {"step_size": 30, "gamma": 0.1}, "crop": {"padding": 4}}
    with tempfile.TemporaryDirectory() as tmp:
        loop = build(args.data_root, names, {k: v for k, v in raw.items() if k in names}, args.epochs, Path(tmp))
        instrument(loop)
        loop.model.train()
        wall = 0.0
        for _ in range(args.epochs):
            with EpochBar(loop.progress, enabled=False) as bar:
                start = CLOCK()
                training.train_epoch(loop, bar)
                wall += CLOCK() - start
            loop.state.count_epoch()  # the loop counts it in fit; Progress is frozen
        updates = loop.progress.update
        times, calls = dict(TIMES), dict(CALLS)  # before the bare loops add to the shared timers
        bare_aug = bare_loop(loop, augment=True)
        bare = bare_loop(loop, augment=False)
        loop.tracker.finish({}, "finished")

    total = wall / updates * 1e3
    print(f"plugins {','.join(names)}; {torch.get_num_threads()} torch threads; {args.clock} clock; {updates} updates of 64; "
          f"{updates * 64 / wall:,.0f} samples/s; {total:.3f} ms/update")
    print(f"{'part':<52}{'ms/update':>10}{'share':>8}{'calls':>8}")
    parts = sorted(times.items(), key=lambda kv: (kv[0] != "train_update (all of it)", -kv[1]))
    for name, seconds in parts:
        ms = seconds / updates * 1e3
        print(f"{name:<52}{ms:>10.3f}{ms / total:>8.1%}{calls[name]:>8}")
    top = ("set_lr (incl. lr_factor hook)", "train_update (all of it)", "log window reduce (.tolist sync)",
           "tracker.log (jsonl record)", "stop check")
    inside = ("uint8 -> float /255 (data.images)", "hook call transform_batch (pluggy + plugins)", "model forward",
              "hook call loss (pluggy + plugins)", "cross_entropy", "accelerator.backward (wrapper + autograd)",
              "hook call before_optimizer_step (pluggy + plugins)", "AcceleratedOptimizer.step (wrapper + SGD)",
              "optimizer.zero_grad", "hook call after_optimizer_step (pluggy + plugins)")
    rest_update = (times["train_update (all of it)"] - sum(times.get(k, 0.0) for k in inside)) / updates * 1e3
    rest_epoch = (wall - sum(times.get(k, 0.0) for k in top)) / updates * 1e3
    print(f"{'unwrapped code in train_update (index, seed, .to, sums)':<52}{rest_update:>10.3f}{rest_update / total:>8.1%}")
    print(f"{'unwrapped code in train_epoch (loop, bar, slicing)':<52}{rest_epoch:>10.3f}{rest_epoch / total:>8.1%}")
    print(f"\nbare tensor loop, same model/SGD/data: {bare_aug:,.0f} samples/s with crop+flip+normalize, "
          f"{bare:,.0f} without")


if __name__ == "__main__":
    main()
