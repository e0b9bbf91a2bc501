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
from dataclasses import dataclass, field, replace
from functools import cached_property
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
from hpplug.step import labels, train_update
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

    ``progress`` is frozen: hooks get it as it is, and only the loop moves it on
    (:meth:`count_update`, :meth:`count_epoch`). Sums are per process; at a checkpoint they
    are reduced onto the main process, which is the only one whose copy is saved and restored.
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
    stop_reason: str | None = None  # a plugin's (hpplug_should_stop): training ends after this epoch
    trained: bool = False  # hpplug_train_end has run: only the test is left

    def __post_init__(self) -> None:
        self.epoch_sums = torch.zeros(3, device=self.device, dtype=torch.float64)
        self.window = torch.zeros(3, device=self.device, dtype=torch.float64)

    def count_update(self) -> None:
        self.progress = replace(self.progress, update=self.progress.update + 1)

    def count_epoch(self) -> None:
        self.progress = replace(self.progress, epoch=self.progress.epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        p = self.progress
        return {"update": p.update, "epoch": p.epoch, "history": self.history, "train_time": self.train_time,
                "train_samples": self.train_samples, "epoch_time": self.epoch_time,
                "epoch_sums": self.epoch_sums.tolist(), "window": self.window.tolist(),
                "stop_reason": self.stop_reason, "trained": self.trained}

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
                and all(isinstance(m, dict) and number(m.get("train/loss")) for m in state["history"])
                and isinstance(state.get("stop_reason"), (str, type(None))) and type(state.get("trained")) is bool):
            raise ValueError("it is not the loop's counters, sums and metrics")
        per_epoch, epochs = self.progress.updates_per_epoch, self.progress.epochs
        if not (per_epoch * state["epoch"] <= state["update"] <= per_epoch * (state["epoch"] + 1)
                and len(state["history"]) == state["epoch"] <= epochs):
            raise ValueError(f"update {state['update']} of epoch {state['epoch']} does not fit "
                             f"{per_epoch} updates per epoch and {epochs} epochs")
        self.progress = replace(self.progress, update=state["update"], epoch=state["epoch"])
        self.history, self.train_time = state["history"], state["train_time"]
        self.train_samples, self.epoch_time = state["train_samples"], state["epoch_time"]
        self.stop_reason, self.trained = state["stop_reason"], state["trained"]
        if self.is_main:
            self.epoch_sums.copy_(torch.tensor(state["epoch_sums"], dtype=torch.float64))
            self.window.copy_(torch.tensor(state["window"], dtype=torch.float64))



@dataclass
class Loop:
    """Everything one run needs while it trains; built by :func:`hpplug.engine.prepare`."""

    config: RunConfig
    accelerator: Accelerator
    hook: pluggy.HookRelay
    plugins: dict[str, Plugin]  # by name, in hook order: --plugin ones, the model, the data set
    data: RunData
    model: torch.nn.Module  # as Accelerate prepared it (DistributedDataParallel on several processes)
    optimizer: torch.optim.Optimizer  # Accelerate's wrapper
    tracker: Tracker
    state: LoopState
    base_lrs: list[float]
    batch_generator: torch.Generator
    start_config: dict[str, Any]
    every: checkpoint.Every | None = None
    stop: checkpoint.StopRequests | None = None
    stepper: torch.optim.Optimizer | None = None  # see hpplug.step.stepper

    @property
    def progress(self) -> Progress:
        return self.state.progress

    @cached_property
    def module(self) -> torch.nn.Module:
        """The model itself, as hooks get it: never a DistributedDataParallel wrapper. Asked
        of Accelerate once: its unwrap_model looks for DeepSpeed on every call (~1-5 ms)."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def torch_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)

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


def _with_index(source: Source, chunks: list[torch.Tensor], device: torch.device):
    """``(x, y, index)`` per chunk: the batch, and its samples' positions in the data set."""
    for chunk, (x, y) in zip(chunks, source.batches(chunks, device)):
        yield x, y, source.index[chunk.to(source.index.device)]


def evaluate(loop: Loop, source: Source, split: str, metrics: dict[str, float]) -> dict[str, float]:
    """Loss and accuracy over a whole split, each sample counted once across processes,
    added to ``metrics`` as ``<split>/loss``, ``<split>/accuracy``, ``<split>/samples``.

    Plugins see the evaluation start and end (``ema`` swaps its weights in and out).
    """
    acc, model = loop.accelerator, loop.model
    model.eval()
    loop.hook.hpplug_evaluation_start(model=loop.module, split=split, progress=loop.progress)
    share = _local(torch.arange(len(source)), acc)
    sums = torch.zeros(3, device=acc.device, dtype=torch.float64)
    with torch.no_grad():
        for x, y in _eval_batches(loop, source, share):
            logits = model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == labels(y)).sum()
            sums[2] += len(y)
    loss, correct, count = acc.reduce(sums, reduction="sum").tolist()
    metrics.update({f"{split}/loss": loss / count, f"{split}/accuracy": correct / count, f"{split}/samples": int(count)})
    # Read-only views: the metrics a sweep optimizes are the engine's (extras: hpplug.guard).
    loop.hook.hpplug_evaluation_end(metrics=MappingProxyType(metrics), model=loop.module, split=split,
                                    progress=loop.progress)
    model.train()
    return metrics


def _eval_batches(loop: Loop, source: Source, share: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` of ``share`` of ``source`` on the device, after the evaluation transforms."""
    device = loop.accelerator.device
    for x, y, index in _with_index(source, list(share.split(loop.config.eval_batch_size)), device):
        batch = Batch(source.inputs(x), y, False, None, index=index, num_classes=loop.data.num_classes)
        loop.hook.hpplug_transform_batch(batch=batch, progress=loop.progress)
        yield batch.x.to(device), batch.y.to(device)


def train_inputs(loop: Loop) -> Iterator[torch.Tensor]:
    """Every training input, after the evaluation transforms, the same on every process
    (for ``hpplug_train_end``: batch-norm statistics must agree between processes)."""
    with torch.no_grad():
        for x, _ in _eval_batches(loop, loop.data.train, torch.arange(len(loop.data.train))):
            yield x


def train_epoch(loop: Loop, bar: Any) -> dict[str, float]:
    c, s = loop.config, loop.state
    p = loop.progress  # at the epoch's start; the counters move on in loop.progress
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
            if loop.progress.update % c.log_every == 0:
                bar.set_postfix(loss=f"{log_update(loop, lr):.4f}", lr=f"{lr:.3g}")
            if update_checkpoint_due(loop):
                s.epoch_time += time.perf_counter() - start
                loop.save_checkpoint()  # not counted as training time
                start = time.perf_counter()
            _check_stop(loop)
    finally:
        s.epoch_time += time.perf_counter() - start
    return epoch_train_metrics(loop, first, lr)


def log_update(loop: Loop, lr: float) -> float:
    """Every ``--log-every`` updates: the mean loss since the last log, the LR and the
    plugins' update metrics, logged at this update; returns that loss."""
    s = loop.state
    s.epoch_sums += s.window
    loss, _ = _mean(loop, s.window)
    s.window.zero_()
    logged = {"train/loss": loss, "lr": lr, "epoch": loop.progress.epoch_fraction}
    for extra in loop.hook.hpplug_update_metrics(progress=loop.progress):
        logged.update(extra)
    loop.tracker.log(logged, step=loop.progress.update)
    return loss


def update_checkpoint_due(loop: Loop) -> bool:
    """``--checkpoint-every N[updates]`` falls on the update just taken."""
    return bool(loop.every and loop.every.unit == "updates" and loop.progress.update % loop.every.n == 0)


def epoch_train_metrics(loop: Loop, first: int, lr: float) -> dict[str, float]:
    """The epoch's training metrics (it trained from its update ``first``), folded into the
    run's totals; the running sums start again."""
    s, n, per_update = loop.state, len(loop.data.train), loop.config.global_batch_size
    s.epoch_sums += s.window
    s.window.zero_()
    loss, accuracy = _mean(loop, s.epoch_sums)  # .tolist() waits for the device
    samples = n - first * per_update
    elapsed, s.epoch_time = s.epoch_time, 0.0
    s.epoch_sums.zero_()
    s.train_time += elapsed
    s.train_samples += samples
    return {"train/loss": loss, "train/accuracy": accuracy, "train/samples_per_s": samples / elapsed, "lr": lr}


def _stop_reason(loop: Loop, metrics: dict[str, float]) -> str | None:
    """The plugins' reasons to stop after this epoch, agreed by every process."""
    reasons = loop.hook.hpplug_should_stop(metrics=MappingProxyType(metrics), progress=loop.progress)
    reason = "; ".join(reasons) or None
    if loop.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        reason = next((r for r in gather_object([reason]) if r), None)
    return reason


def end_epoch(loop: Loop, metrics: dict[str, float], show: Callable[[dict[str, float]], Any]) -> bool:
    """After an epoch's training and validation: count it, add the plugins' extras,
    ``show`` and log the epoch's metrics, ask the plugins whether to stop. Returns whether
    a checkpoint is due (the last epoch's is saved after ``hpplug_train_end``)."""
    s, every = loop.state, loop.every
    s.count_epoch()
    for extra in loop.hook.hpplug_epoch_end(metrics=MappingProxyType(metrics), progress=loop.progress):
        metrics.update(extra)
    metrics["epoch"] = loop.progress.epoch
    show(metrics)
    s.history.append(metrics)
    loop.tracker.log(metrics, step=loop.progress.update)
    s.stop_reason = _stop_reason(loop, metrics)
    last = s.stop_reason is not None or loop.progress.epoch == loop.config.epochs
    return bool(every and not last and (every.unit == "updates" or loop.progress.epoch % every.n == 0))


def fit(loop: Loop, bar_factory: Callable[..., Any]) -> dict[str, float]:
    """Train for the remaining epochs, validating after each, until the last epoch or a
    plugin's stop; then end training. Returns the last epoch's metrics."""
    s, every = loop.state, loop.every
    metrics: dict[str, float] = s.history[-1] if s.history else {}
    if s.trained:  # resumed after training had ended: only the test is left
        return metrics
    loop.model.train()
    loop.hook.hpplug_train_start(model=loop.module, progress=loop.progress, config=loop.config)
    while s.stop_reason is None and loop.progress.epoch < loop.config.epochs:
        loop.hook.hpplug_epoch_start(progress=loop.progress)
        with bar_factory(loop.progress) as bar:
            metrics = train_epoch(loop, bar)
            if loop.data.val is not None:
                evaluate(loop, loop.data.val, "val", metrics)
            due = end_epoch(loop, metrics, bar.epoch_done)
        if due:
            loop.save_checkpoint()
    loop.hook.hpplug_train_end(model=loop.module, progress=loop.progress, train_inputs=lambda: train_inputs(loop))
    s.trained = True
    if every:
        loop.save_checkpoint()
    return metrics


def final_test(loop: Loop) -> dict[str, float]:
    """The test split, once, after training: what the run reports, never what it tunes on."""
    if loop.data.test is None:
        return {}
    metrics = evaluate(loop, loop.data.test, "test", {})
    loop.tracker.log(metrics, step=loop.progress.update)
    return metrics
