"""The training loop, in the order the hooks fire: for each epoch, for each update, set the
LR, feed the batch through the transforms, model and loss, step; evaluate on the validation
split after each epoch and on the test split once at the end.

The loop owns the update and epoch counters and sets the LR itself before every optimizer
update from the plugins' factors; no torch scheduler is handed to Accelerate, so the LR
cannot step once per process (accelerate issues 2926, 2142, 1398). Sample order and
augmentation draws are pure functions of (seed, epoch, update, rank), so one process or
several, in memory or streamed, interrupted or not, train alike.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator

import pluggy
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from hpplug import checkpoint
from hpplug.config import RunConfig
from hpplug.errors import HpplugError
from hpplug.feed import RunData, Source
from hpplug.plugin import Batch, Plugin, Progress
from hpplug.tracking import Tracker

class Stopped(Exception):
    """Training ended on request (a signal) before the last epoch."""

    def __init__(self, reason: str, signum: int | None) -> None:
        super().__init__(reason)
        self.reason, self.signum = reason, signum



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
                and all(isinstance(m, dict) and number(m.get("train/loss")) for m in state["history"])):
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
    plugins: dict[str, Plugin]  # by name, in hook order: --plugin ones, the model, the data set
    data: RunData
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




def micro_batches(loop: Loop, order: torch.Tensor, first: int) -> list[torch.Tensor]:
    """This process's index chunks for updates ``first`` .. the epoch's last: each update's
    global samples, split into ``grad_accum`` micro-batches, each split between processes."""
    c, per_update = loop.config, loop.config.global_batch_size
    chunks = []
    for u in range(first, loop.progress.updates_per_epoch):
        indices = order[u * per_update:(u + 1) * per_update]
        for chunk in indices.tensor_split(c.grad_accum) if c.grad_accum > 1 else (indices,):
            chunks.append(_local(chunk, loop.accelerator))
    return chunks


def train_update(loop: Loop, feed: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], size: int) -> None:
    """One optimizer update over the next ``grad_accum`` micro-batches of ``feed`` (``size``
    samples over all processes).

    The loss is scaled so that the gradient is the mean over all of the update's samples
    however they are split between processes and micro-batches: 1, 2 or N processes train alike.
    """
    c, acc, sums, train = loop.config, loop.accelerator, loop.state.window, loop.data.train
    # Per-update seed: augmentation draws are a pure function of (seed, rank, update).
    loop.batch_generator.manual_seed(c.seed * 1_000_003 + loop.progress.update * 131 + acc.process_index)
    scale = acc.num_processes / size
    for i in range(c.grad_accum):
        x, y, index = next(feed)
        batch = Batch(train.inputs(x), y, True, loop.batch_generator, index=index)
        loop.hook.hpplug_transform_batch(batch=batch, progress=loop.progress)
        x, y = batch.x.to(acc.device, non_blocking=True), batch.y.to(acc.device, non_blocking=True)
        last = i == c.grad_accum - 1
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


def _with_index(source: Source, chunks: list[torch.Tensor], device: torch.device):
    """``(x, y, index)`` per chunk: the batch, and its samples' positions in the data set."""
    for chunk, (x, y) in zip(chunks, source.batches(chunks, device)):
        yield x, y, source.index[chunk.to(source.index.device)]


def evaluate(loop: Loop, source: Source, prefix: str) -> dict[str, float]:
    """Loss and accuracy over a whole split, each sample counted once across processes."""
    acc = loop.accelerator
    loop.model.eval()
    share = _local(torch.arange(len(source)), acc)
    sums = torch.zeros(3, device=acc.device, dtype=torch.float64)
    with torch.no_grad():
        chunks = list(share.split(loop.config.eval_batch_size))
        for x, y, index in _with_index(source, chunks, acc.device):
            batch = Batch(source.inputs(x), y, False, None, index=index)
            loop.hook.hpplug_transform_batch(batch=batch, progress=loop.progress)
            x, y = batch.x.to(acc.device), batch.y.to(acc.device)
            logits = loop.model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(y)
    loss, correct, count = acc.reduce(sums, reduction="sum").tolist()
    loop.model.train()
    return {f"{prefix}/loss": loss / count, f"{prefix}/accuracy": correct / count, f"{prefix}/samples": int(count)}


def train_epoch(loop: Loop, bar: Any) -> dict[str, float]:
    c, p, s = loop.config, loop.progress, loop.state
    n = len(loop.data.train)
    order = epoch_order(n, c.seed, p.epoch)
    per_update = c.global_batch_size
    first = p.update - p.epoch * p.updates_per_epoch
    chunks = micro_batches(loop, order, first)
    feed = _with_index(loop.data.train, chunks, loop.accelerator.device)
    lr = loop.base_lrs[0]
    start = time.perf_counter()
    try:
        for u in range(first, p.updates_per_epoch):
            lr = set_lr(loop)
            train_update(loop, feed, min(per_update, n - u * per_update))
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
    samples = n - first * per_update
    elapsed, s.epoch_time = s.epoch_time, 0.0
    s.epoch_sums.zero_()
    s.train_time += elapsed
    s.train_samples += samples
    return {"train/loss": loss, "train/accuracy": accuracy, "train/samples_per_s": samples / elapsed, "lr": lr}


def fit(loop: Loop, bar_factory: Callable[..., Any]) -> dict[str, float]:
    """Train for the remaining epochs, validating after each; returns the last epoch's metrics."""
    p = loop.progress
    loop.model.train()
    metrics: dict[str, float] = loop.state.history[-1] if loop.state.history else {}
    while p.epoch < loop.config.epochs:
        with bar_factory(p) as bar:
            metrics = train_epoch(loop, bar)
            if loop.data.val is not None:
                metrics.update(evaluate(loop, loop.data.val, "val"))
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


def final_test(loop: Loop) -> dict[str, float]:
    """The test split, once, after training: what the run reports, never what it tunes on."""
    if loop.data.test is None:
        return {}
    metrics = evaluate(loop, loop.data.test, "test")
    loop.hook.hpplug_evaluation_end(metrics=MappingProxyType(metrics), progress=loop.progress)
    loop.tracker.log(metrics, step=loop.progress.update)
    return metrics
