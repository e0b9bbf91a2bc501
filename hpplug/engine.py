"""The training loop: Accelerate underneath, pluggy hooks at each step, counters owned here.

The engine owns the update and epoch counters and sets the LR itself before every
optimizer update from the plugins' factors; no torch scheduler is handed to Accelerate,
so the LR cannot step once per process (accelerate issues 2926, 2142, 1398). Sample
order and augmentation draws are pure functions of (seed, epoch, update, rank), so one
process or several, interrupted or not, train alike.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import pluggy
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

from hpplug import checkpoint
from hpplug import data as datasets
from hpplug import models, preflight
from hpplug.config import RunConfig
from hpplug.console import EpochBar
from hpplug.errors import HpplugError, summary_fields
from hpplug.plugin import Batch, Plugin, Progress
from hpplug.tracking import Tracker

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr),
}


class Stopped(Exception):
    """Training ended on request (a signal) before the last epoch."""

    def __init__(self, reason: str, signum: int | None) -> None:
        super().__init__(reason)
        self.reason, self.signum = reason, signum


def make_accelerator(config: RunConfig, tracking: bool) -> Accelerator:
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise HpplugError("--mixed-precision fp16 needs a CUDA GPU; on the CPU use bf16 or no")
    # Accelerate keeps one global state per process; a second run in the same process
    # (tests, notebooks) may ask for another precision.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with="wandb" if tracking else None)
    check_launch(accelerator)
    return accelerator


def check_launch(accelerator: Accelerator) -> None:
    """Several processes that each train alone as rank 0 are a launch mistake, not a run."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and accelerator.num_processes == 1:
        raise HpplugError(
            f"launched as {world} processes (WORLD_SIZE={world}) but each trains alone as rank 0; "
            f"without GPUs set ACCELERATE_USE_CPU=1 (ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            f"--num_processes {world} -m hpplug run ..., or torchrun --nproc_per_node {world} -m hpplug run ...)")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: the same on every process, a pure function of
    (seed, epoch) so a resumed run replays it exactly."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@dataclass
class LoopState:
    """The loop's counters and running sums; checkpointed beside model and optimizer.

    Sums are per process; at a checkpoint they are reduced onto the main process, which is
    the only one whose copy is saved and restored.
    """

    progress: Progress
    device: torch.device
    history: list[dict[str, float]] = field(default_factory=list)
    train_time: float = 0.0
    train_samples: int = 0
    epoch_time: float = 0.0
    epoch_sums: torch.Tensor = None  # type: ignore[assignment]  # loss, correct, count
    window: torch.Tensor = None  # type: ignore[assignment]
    is_main: bool = True

    def __post_init__(self) -> None:
        self.epoch_sums = torch.zeros(3, device=self.device, dtype=torch.float64)
        self.window = torch.zeros(3, device=self.device, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        p = self.progress
        return {"update": p.update, "epoch": p.epoch, "history": self.history, "train_time": self.train_time,
                "train_samples": self.train_samples, "epoch_time": self.epoch_time,
                "epoch_sums": self.epoch_sums.tolist(), "window": self.window.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; ``ValueError`` when ``state`` (read from
        disk: untrusted) cannot be this run's counters."""
        def number(v: Any) -> bool:
            return type(v) in (int, float)

        if not (isinstance(state, dict)
                and all(type(state.get(k)) is int and state[k] >= 0 for k in ("update", "epoch", "train_samples"))
                and all(number(state.get(k)) and state[k] >= 0 for k in ("train_time", "epoch_time"))
                and all(isinstance(state.get(k), list) and len(state[k]) == 3 and all(map(number, state[k]))
                        for k in ("epoch_sums", "window"))
                and isinstance(state.get("history"), list)
                and all(isinstance(m, dict) and number(m.get("test/accuracy")) for m in state["history"])):
            raise ValueError("it is not the loop's counters, sums and metrics")
        per_epoch, epochs = self.progress.updates_per_epoch, self.progress.epochs
        if not (per_epoch * state["epoch"] <= state["update"] <= per_epoch * (state["epoch"] + 1)
                and len(state["history"]) == state["epoch"] <= epochs):
            raise ValueError(f"update {state['update']} of epoch {state['epoch']} does not fit "
                             f"{per_epoch} updates per epoch and {epochs} epochs")
        self.progress.update, self.progress.epoch = state["update"], state["epoch"]
        self.history, self.train_time = state["history"], state["train_time"]
        self.train_samples, self.epoch_time = state["train_samples"], state["epoch_time"]
        if self.is_main:
            self.epoch_sums.copy_(torch.tensor(state["epoch_sums"], dtype=torch.float64))
            self.window.copy_(torch.tensor(state["window"], dtype=torch.float64))


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
    state: LoopState
    base_lrs: list[float]
    batch_generator: torch.Generator
    start_config: dict[str, Any]
    every: checkpoint.Every | None = None
    stop: checkpoint.StopRequests | None = None
    stepper: torch.optim.Optimizer | None = None  # see _stepper

    @property
    def progress(self) -> Progress:
        return self.state.progress

    def save_checkpoint(self) -> Path:
        acc, s = self.accelerator, self.state
        for sums in (s.epoch_sums, s.window):
            total = acc.reduce(sums.clone(), reduction="sum")
            sums.copy_(total if acc.is_main_process else torch.zeros_like(total))
        return checkpoint.save(self)


def prepare(config: RunConfig, pm: pluggy.PluginManager, plugins: list[Plugin],
            accelerator: Accelerator, tracker: Tracker, download: bool = True) -> Loop:
    """Fire the set-up hooks in order and build data, model and optimizer."""
    start_config = config.to_dict()
    config.num_processes = accelerator.num_processes
    pm.hook.hpplug_adjust_config(config=config)
    set_seed(config.seed)
    with accelerator.main_process_first():
        data = datasets.load(config.dataset, config.data_root, download=download)
    data = data.to(datasets.placement(data, accelerator.device))
    # With the real data and the plugins' changes to the config; nothing is allocated if it fails.
    preflight.check_memory(config, data.input_shape, data.num_classes, len(data.train_y), len(data.test_y),
                           accelerator.device)
    model = models.build(config.model, data.input_shape, data.num_classes, config.hidden)
    pm.hook.hpplug_adjust_model(model=model, config=config)
    groups = pm.hook.hpplug_param_groups(model=model, config=config) or model.parameters()
    optimizer = OPTIMIZERS[config.optimizer](groups, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    per_update = config.global_batch_size
    progress = Progress(update=0, epoch=0, updates_per_epoch=math.ceil(len(data.train_y) / per_update),
                        epochs=config.epochs)
    state = LoopState(progress, accelerator.device, is_main=accelerator.is_main_process)
    loop = Loop(config, accelerator, pm.hook, plugins, data, model, optimizer, tracker, state,
                base_lrs=[g["lr"] for g in optimizer.param_groups],
                batch_generator=torch.Generator(device=accelerator.device), start_config=start_config,
                every=checkpoint.Every.parse(config.checkpoint_every))
    loop.stepper = _stepper(loop)
    return loop


def set_lr(loop: Loop) -> float:
    """Apply the plugins' factors for the next update; returns the LR of the first group."""
    factor = 1.0
    for f in loop.hook.hpplug_lr_factor(progress=loop.progress, base_lr=loop.config.lr):
        factor *= f  # each a finite number >= 0 (hpplug.guard); their product may still overflow
    if not math.isfinite(loop.base_lrs[0] * factor):
        raise HpplugError(f"the LR plugins' factors multiply to {factor!r} at update {loop.progress.update}: "
                          f"the LR {loop.base_lrs[0]} x {factor!r} is not a finite number")
    for group, base in zip(loop.optimizer.param_groups, loop.base_lrs):
        group["lr"] = base * factor
    return loop.base_lrs[0] * factor


def _local(indices: torch.Tensor, acc: Accelerator) -> torch.Tensor:
    """This process's contiguous share of a global (micro-)batch."""
    return indices.tensor_split(acc.num_processes)[acc.process_index] if acc.num_processes > 1 else indices


def _stepper(loop: Loop) -> torch.optim.Optimizer:
    """The optimizer to step: torch's own when Accelerate's wrapper would add nothing.

    The wrapper matters for a gradient scaler (fp16), XLA and DeepSpeed; otherwise its
    per-call package and signature checks cost ~8% of an update of a small model.
    """
    from accelerate.utils import DistributedType

    plain = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    acc = loop.accelerator
    if acc.scaler is None and acc.distributed_type in plain:
        return loop.optimizer.optimizer
    return loop.optimizer


def train_update(loop: Loop, indices: torch.Tensor) -> None:
    """One optimizer update over ``indices`` (the global samples of this update).

    The loss is scaled so that the gradient is the mean over all of ``indices`` however
    they are split between processes and micro-batches: 1, 2 or N processes train alike.
    """
    c, acc, sums = loop.config, loop.accelerator, loop.state.window
    # Per-update seed: augmentation draws are a pure function of (seed, rank, update).
    loop.batch_generator.manual_seed(c.seed * 1_000_003 + loop.progress.update * 131 + acc.process_index)
    micro = indices.tensor_split(c.grad_accum) if c.grad_accum > 1 else (indices,)
    scale = acc.num_processes / len(indices)
    for i, chunk in enumerate(micro):
        idx = _local(chunk, acc)
        batch = Batch(loop.data.images(loop.data.train_x[idx]), loop.data.train_y[idx], True,
                      loop.batch_generator, index=idx)
        loop.hook.hpplug_transform_batch(batch=batch, progress=loop.progress)
        x, y = batch.x.to(acc.device, non_blocking=True), batch.y.to(acc.device, non_blocking=True)
        last = i == len(micro) - 1
        with acc.no_sync(loop.model) if not last and acc.num_processes > 1 else nullcontext():
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
    loop.stepper.step()
    loop.stepper.zero_grad(set_to_none=True)
    loop.progress.update += 1
    loop.hook.hpplug_after_optimizer_step(model=loop.model, progress=loop.progress)


def evaluate(loop: Loop) -> dict[str, float]:
    """Loss and accuracy over the whole test set, each sample counted once across processes."""
    acc, data = loop.accelerator, loop.data
    loop.model.eval()
    share = _local(torch.arange(len(data.test_y), device=data.test_y.device), acc)
    sums = torch.zeros(3, device=acc.device, dtype=torch.float64)
    with torch.no_grad():
        for idx in share.split(loop.config.eval_batch_size):
            batch = Batch(data.images(data.test_x[idx]), data.test_y[idx], False, None, index=idx)
            loop.hook.hpplug_transform_batch(batch=batch, progress=loop.progress)
            x, y = batch.x.to(acc.device), batch.y.to(acc.device)
            logits = loop.model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(y)
    loss, correct, count = acc.reduce(sums, reduction="sum").tolist()
    loop.model.train()
    return {"test/loss": loss / count, "test/accuracy": correct / count, "test/samples": int(count)}


def _mean(loop: Loop, sums: torch.Tensor) -> tuple[float, float]:
    loss, correct, count = loop.accelerator.reduce(sums.clone(), reduction="sum").tolist()
    return loss / max(count, 1), correct / max(count, 1)


_STOP_REASONS = (None, "stopped", "interrupted")


def _check_stop(loop: Loop) -> None:
    """Between updates: honour a stop request, agreed by all processes."""
    if loop.stop is None:
        return
    acc = loop.accelerator
    if acc.num_processes > 1:
        if loop.progress.update % loop.config.log_every:
            return
        # The most severe request of any process wins: interrupted > stopped > none.
        flag = torch.tensor([_STOP_REASONS.index(loop.stop.reason)], device=acc.device)
        loop.stop.reason = _STOP_REASONS[int(acc.gather(flag).max().item())]
    if loop.stop.reason is not None:
        raise Stopped(loop.stop.reason, loop.stop.signum)


def train_epoch(loop: Loop, bar: Any) -> dict[str, float]:
    c, p, s = loop.config, loop.progress, loop.state
    order = epoch_order(len(loop.data.train_y), c.seed, p.epoch).to(loop.data.train_y.device)
    per_update = c.global_batch_size
    first = p.update - p.epoch * p.updates_per_epoch
    lr = loop.base_lrs[0]
    start = time.perf_counter()
    try:
        for u in range(first, p.updates_per_epoch):
            lr = set_lr(loop)
            train_update(loop, order[u * per_update:(u + 1) * per_update])
            bar.update(1)
            if p.update % c.log_every == 0:
                s.epoch_sums += s.window
                loss, _ = _mean(loop, s.window)
                s.window.zero_()
                loop.tracker.log({"train/loss": loss, "lr": lr, "epoch": p.epoch_fraction}, step=p.update)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")
            if loop.every and loop.every.unit == "updates" and p.update % loop.every.n == 0:
                s.epoch_time += time.perf_counter() - start
                loop.save_checkpoint()  # not counted as training time
                start = time.perf_counter()
            _check_stop(loop)
    finally:
        s.epoch_time += time.perf_counter() - start
    s.epoch_sums += s.window
    s.window.zero_()
    loss, accuracy = _mean(loop, s.epoch_sums)  # .tolist() waits for the device
    samples = len(loop.data.train_y) - first * per_update
    elapsed, s.epoch_time = s.epoch_time, 0.0
    s.epoch_sums.zero_()
    s.train_time += elapsed
    s.train_samples += samples
    return {"train/loss": loss, "train/accuracy": accuracy, "train/samples_per_s": samples / elapsed, "lr": lr}


def fit(loop: Loop, bar_factory: Callable[..., Any]) -> dict[str, float]:
    """Train for the remaining epochs; returns the last epoch's metrics."""
    p = loop.progress
    loop.model.train()
    metrics: dict[str, float] = loop.state.history[-1] if loop.state.history else {}
    while p.epoch < loop.config.epochs:
        with bar_factory(p) as bar:
            metrics = train_epoch(loop, bar)
            metrics.update(evaluate(loop))
            # Read-only views: the metrics a sweep optimizes are the engine's (extras: hpplug.guard).
            loop.hook.hpplug_evaluation_end(metrics=MappingProxyType(metrics), progress=p)
            p.epoch += 1
            for extra in loop.hook.hpplug_epoch_end(metrics=MappingProxyType(metrics), progress=p):
                metrics.update(extra)
            metrics["epoch"] = p.epoch
            bar.epoch_done(metrics)
        loop.state.history.append(metrics)
        loop.tracker.log(metrics, step=p.update)
        if loop.every and (loop.every.unit == "updates" or p.epoch % loop.every.n == 0 or p.epoch == p.epochs):
            loop.save_checkpoint()
    return metrics


@dataclass
class RunResult:
    run_id: str
    status: str
    summary: dict[str, Any]
    record_dir: str
    sync_hint: str | None
    signum: int | None = None
    is_main: bool = True


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


def _summary(loop: Loop | None, final: dict[str, Any]) -> dict[str, Any]:
    """Final values: the last epoch's metrics (also when stopped mid-epoch) and run totals."""
    summary = dict(final or (loop.state.history[-1] if loop is not None and loop.state.history else {}))
    if loop is not None:
        s = loop.state
        summary.update({"updates": s.progress.update, "epochs_done": s.progress.epoch})
        if s.train_time > 0:
            summary.update({"train/samples_per_s": s.train_samples / s.train_time, "train/time_s": s.train_time})
        if s.history:
            summary["best/test/accuracy"] = max(m["test/accuracy"] for m in s.history)
    return summary


def run(config: RunConfig, entries: list[Any], *, download: bool = True, show_progress: bool = True,
        apply_overrides: Callable[[RunConfig, dict[str, Any]], Any] | None = None,
        resume_dir: str | Path | None = None) -> RunResult:
    """Train one run end to end; the local record and W&B are closed whatever happens.

    ``apply_overrides`` merges what W&B says the config is (a sweep's locked values) into
    ``config`` before anything is built. ``resume_dir`` continues a run from its checkpoint.
    """
    from hpplug import manager, record
    from hpplug.tracking import new_run_id, resolve_mode

    mode = resolve_mode(config.wandb_mode)
    accelerator = make_accelerator(config, tracking=mode != "disabled")
    if resume_dir is not None:
        run_id = Path(resume_dir).name
        config.output_dir = str(Path(resume_dir).parent)
    else:
        run_id = _broadcast(accelerator, record.env_run_id() or new_run_id())
    tracker = Tracker(accelerator, mode, run_id, config.output_dir)
    tracker.start(config.project, wandb_config(config, entries), resuming=resume_dir is not None)
    status, final, loop, signum = "failed", {}, None, None
    try:
        if apply_overrides is not None and resume_dir is None:
            overrides = _broadcast(accelerator, tracker.wandb_config())
            config, entries = apply_overrides(config, overrides)
            tracker.write_config(wandb_config(config, entries))
        pm, plugins = manager.build(entries, config.plugin_params)
        loop = prepare(config, pm, plugins, accelerator, tracker, download=download)
        if resume_dir is not None:
            checkpoint.restore(loop, Path(resume_dir))
        tracker.update_config({"effective_lr": config.lr, "global_batch_size": config.global_batch_size,
                               "num_processes": config.num_processes})
        enabled = show_progress and accelerator.is_main_process
        with checkpoint.StopRequests() as loop.stop:
            final = fit(loop, lambda p: EpochBar(p, config.global_batch_size, enabled=enabled))
        status = "finished"
    except Stopped as stop:
        status, signum = stop.reason, stop.signum
        if stop.reason == "interrupted":
            loop.save_checkpoint()
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary = _summary(loop, final)
        failure = sys.exc_info()[1]  # only an exception leaves the status failed: this one
        if status == "failed" and failure is not None:
            summary.update(summary_fields(failure))
        hint = tracker.finish(summary, status)
    return RunResult(run_id, status, summary, str(tracker.record_dir), hint, signum,
                     accelerator.is_main_process)
