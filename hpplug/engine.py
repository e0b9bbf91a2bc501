"""The training loop: Accelerate underneath, pluggy hooks at each step, counters owned here.

The engine owns the update and epoch counters and sets the LR itself before every
optimizer update from the plugins' factors; no torch scheduler is handed to Accelerate,
so the LR cannot step once per process (accelerate issues 2926, 2142, 1398).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

from hpplug import data as datasets
from hpplug import models
from hpplug.config import RunConfig
from hpplug.errors import HpplugError
from hpplug.plugin import Batch, Plugin, Progress
from hpplug.console import EpochBar
from hpplug.tracking import Tracker

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr),
}


def make_accelerator(config: RunConfig, tracking: bool) -> Accelerator:
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise HpplugError("--mixed-precision fp16 needs a CUDA GPU; on the CPU use bf16 or no")
    # Accelerate keeps one global state per process; a second run in the same process
    # (tests, notebooks, in-process sweeps) may ask for another precision.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(mixed_precision=config.mixed_precision, log_with="wandb" if tracking else None)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: the same on every process, a pure function of
    (seed, epoch) so a resumed run replays it exactly."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@dataclass
class Loop:
    """Everything one run needs while it trains; built by :func:`prepare`."""

    config: RunConfig
    accelerator: Accelerator
    hook: pluggy.HookRelay
    plugins: list[Plugin]
    data: datasets.TensorDataset
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tracker: Tracker
    progress: Progress
    base_lrs: list[float] = field(default_factory=list)
    batch_generator: torch.Generator | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    train_time: float = 0.0
    train_samples: int = 0


def prepare(config: RunConfig, pm: pluggy.PluginManager, plugins: list[Plugin],
            accelerator: Accelerator, tracker: Tracker, download: bool = True) -> Loop:
    """Fire the set-up hooks in order and build data, model and optimizer."""
    config.num_processes = accelerator.num_processes
    pm.hook.hpplug_adjust_config(config=config)
    set_seed(config.seed)
    with accelerator.main_process_first():
        data = datasets.load(config.dataset, config.data_root, download=download)
    data = data.to(datasets.placement(data, accelerator.device))
    model = models.build(config.model, data.input_shape, data.num_classes, config.hidden)
    pm.hook.hpplug_adjust_model(model=model, config=config)
    groups = pm.hook.hpplug_param_groups(model=model, config=config) or model.parameters()
    optimizer = OPTIMIZERS[config.optimizer](groups, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    per_update = config.batch_size * config.num_processes * config.grad_accum
    progress = Progress(update=0, epoch=0, updates_per_epoch=math.ceil(len(data.train_y) / per_update),
                        epochs=config.epochs)
    generator = torch.Generator(device=accelerator.device)
    return Loop(config, accelerator, pm.hook, plugins, data, model, optimizer, tracker, progress,
                base_lrs=[g["lr"] for g in optimizer.param_groups], batch_generator=generator)


def set_lr(loop: Loop) -> float:
    """Apply the plugins' factors for the next update; returns the LR of the first group."""
    factor = 1.0
    for f in loop.hook.hpplug_lr_factor(progress=loop.progress, base_lr=loop.config.lr):
        factor *= f
    for group, base in zip(loop.optimizer.param_groups, loop.base_lrs):
        group["lr"] = base * factor
    return loop.base_lrs[0] * factor


def _local(indices: torch.Tensor, loop: Loop) -> torch.Tensor:
    """This process's contiguous share of a global (micro-)batch."""
    acc = loop.accelerator
    return indices.tensor_split(acc.num_processes)[acc.process_index] if acc.num_processes > 1 else indices


def train_update(loop: Loop, indices: torch.Tensor, sums: torch.Tensor) -> None:
    """One optimizer update over ``indices`` (the global samples of this update).

    The loss is scaled so that the gradient is the mean over all of ``indices`` however
    they are split between processes and micro-batches: 1, 2 or N processes train alike.
    """
    c, acc = loop.config, loop.accelerator
    # Per-update seed: augmentation draws are a pure function of (seed, rank, update).
    loop.batch_generator.manual_seed(c.seed * 1_000_003 + loop.progress.update * 131 + acc.process_index)
    micro = indices.tensor_split(c.grad_accum) if c.grad_accum > 1 else (indices,)
    scale = acc.num_processes / len(indices)
    for i, chunk in enumerate(micro):
        idx = _local(chunk, loop)
        batch = Batch(loop.data.images(loop.data.train_x[idx]), loop.data.train_y[idx], True,
                      loop.batch_generator)
        loop.hook.hpplug_transform_batch(batch=batch, progress=loop.progress)
        x, y = batch.x.to(acc.device, non_blocking=True), batch.y.to(acc.device, non_blocking=True)
        sync = i == len(micro) - 1
        with acc.no_sync(loop.model) if not sync and acc.num_processes > 1 else nullcontext():
            logits = loop.model(x)
            losses = loop.hook.hpplug_loss(logits=logits, targets=y)
            if losses is None:
                losses = F.cross_entropy(logits, y, reduction="none")
            acc.backward(losses.sum() * scale)
        with torch.no_grad():
            sums[0] += losses.detach().sum().float()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(y)
    loop.hook.hpplug_before_optimizer_step(model=loop.model, progress=loop.progress)
    loop.optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.progress.update += 1
    loop.hook.hpplug_after_optimizer_step(model=loop.model, progress=loop.progress)


def evaluate(loop: Loop) -> dict[str, float]:
    """Loss and accuracy over the whole test set, each sample counted once across processes."""
    acc, data = loop.accelerator, loop.data
    loop.model.eval()
    share = torch.arange(len(data.test_y), device=data.test_y.device).tensor_split(acc.num_processes)[acc.process_index]
    sums = torch.zeros(3, device=acc.device, dtype=torch.float64)
    with torch.no_grad():
        for idx in share.split(loop.config.eval_batch_size):
            batch = Batch(data.images(data.test_x[idx]), data.test_y[idx], False, None)
            loop.hook.hpplug_transform_batch(batch=batch, progress=loop.progress)
            x, y = batch.x.to(acc.device), batch.y.to(acc.device)
            logits = loop.model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(y)
    loss, correct, count = acc.reduce(sums, reduction="sum").tolist()
    loop.model.train()
    return {"test/loss": loss / count, "test/accuracy": correct / count}


def _reduce_window(loop: Loop, window: torch.Tensor) -> tuple[float, float]:
    loss, correct, count = loop.accelerator.reduce(window.clone(), reduction="sum").tolist()
    return loss / max(count, 1), correct / max(count, 1)


def train_epoch(loop: Loop, bar: Any) -> dict[str, float]:
    c, p = loop.config, loop.progress
    order = epoch_order(len(loop.data.train_y), c.seed, p.epoch).to(loop.data.train_y.device)
    per_update = c.batch_size * c.num_processes * c.grad_accum
    epoch_sums = torch.zeros(3, device=loop.accelerator.device, dtype=torch.float64)
    window = torch.zeros(3, device=loop.accelerator.device, dtype=torch.float64)
    start = time.perf_counter()
    first = p.update - p.epoch * p.updates_per_epoch
    lr = loop.base_lrs[0]
    for u in range(first, p.updates_per_epoch):
        lr = set_lr(loop)
        train_update(loop, order[u * per_update:(u + 1) * per_update], window)
        bar.update(1)
        if p.update % c.log_every == 0:
            epoch_sums += window
            loss, _ = _reduce_window(loop, window)
            window.zero_()
            loop.tracker.log({"train/loss": loss, "lr": lr, "epoch": p.epoch_fraction}, step=p.update)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")
    epoch_sums += window
    loss, accuracy = _reduce_window(loop, epoch_sums)  # .tolist() waits for the device
    elapsed = time.perf_counter() - start
    samples = len(loop.data.train_y) - first * per_update
    loop.train_time += elapsed
    loop.train_samples += samples
    return {"train/loss": loss, "train/accuracy": accuracy, "train/samples_per_s": samples / elapsed, "lr": lr}


def fit(loop: Loop, bar_factory: Callable[..., Any]) -> dict[str, float]:
    """Train for the remaining epochs; returns the last epoch's metrics."""
    p = loop.progress
    loop.model.train()
    metrics: dict[str, float] = {}
    while p.epoch < loop.config.epochs:
        with bar_factory(p) as bar:
            metrics = train_epoch(loop, bar)
            metrics.update(evaluate(loop))
            loop.hook.hpplug_evaluation_end(metrics=metrics, progress=p)
            p.epoch += 1
            for extra in loop.hook.hpplug_epoch_end(metrics=metrics, progress=p):
                metrics.update(extra or {})
            metrics["epoch"] = p.epoch
            bar.epoch_done(metrics)
        loop.history.append(metrics)
        loop.tracker.log(metrics, step=p.update)
    return metrics


@dataclass
class RunResult:
    run_id: str
    status: str
    summary: dict[str, Any]
    record_dir: str
    sync_hint: str | None


def _broadcast(accelerator: Accelerator, value: Any) -> Any:
    """Rank 0's value on every process (the run id, the sweep's config)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def wandb_config(config: RunConfig, entries: list[Any]) -> dict[str, Any]:
    """The W&B config: every hyperparameter, and each plugin's distribution and version."""
    return {**config.flat(),
            "plugin_versions": {e.name: f"{e.distribution}=={e.version}" for e in entries}}


def run(config: RunConfig, entries: list[Any], *, download: bool = True, show_progress: bool = True,
        apply_overrides: Callable[[RunConfig, dict[str, Any]], RunConfig] | None = None) -> RunResult:
    """Train one run end to end; the local record and W&B are closed whatever happens.

    ``apply_overrides`` merges what W&B says the config is (a sweep's locked values) into
    ``config`` before anything is built; the CLI passes its own validation for that.
    """
    from hpplug import manager
    from hpplug.tracking import new_run_id, resolve_mode

    mode = resolve_mode(config.wandb_mode)
    accelerator = make_accelerator(config, tracking=mode != "disabled")
    run_id = _broadcast(accelerator, os.environ.get("WANDB_RUN_ID") or new_run_id())
    tracker = Tracker(accelerator, mode, run_id, config.output_dir)
    tracker.start(config.project, wandb_config(config, entries))
    status, final = "failed", {}
    loop = None
    try:
        if apply_overrides is not None:
            overrides = _broadcast(accelerator, tracker.wandb_config())
            config, entries = apply_overrides(config, overrides)
        pm, plugins = manager.build(entries, config.plugin_params)
        loop = prepare(config, pm, plugins, accelerator, tracker, download=download)
        if tracker.wandb_run is not None:
            tracker.wandb_run.config.update({"effective_lr": config.lr,
                                             "global_batch_size": config.global_batch_size},
                                            allow_val_change=True)
        enabled = show_progress and accelerator.is_main_process
        final = fit(loop, lambda p: EpochBar(p, enabled=enabled))
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary = dict(final)
        if loop is not None and loop.train_time > 0:
            summary.update({"train/samples_per_s": loop.train_samples / loop.train_time,
                            "train/time_s": loop.train_time, "updates": loop.progress.update,
                            "epochs_done": loop.progress.epoch})
            if loop.history:
                summary["best/test/accuracy"] = max(m["test/accuracy"] for m in loop.history)
        hint = tracker.finish(summary, status)
    return RunResult(run_id, status, summary, str(tracker.record_dir), hint)
