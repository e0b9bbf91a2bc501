"""One optimizer update: its micro-batches through the transforms, the model and the loss,
backward, then the step, hpplug's own or a plugin's (``hpplug_optimizer_step``).

The loss is scaled so that the gradient is the mean over all of the update's samples however
they are split between processes and micro-batches: 1, 2 or N processes train alike.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F

from hpplug.errors import HpplugError
from hpplug.plugin import Batch

if TYPE_CHECKING:
    from hpplug.loop import Loop


class Step:
    """The update in progress, handed to ``hpplug_optimizer_step``: what a method that
    drives the step itself (SAM's two passes) needs, and nothing of the loop's internals."""

    def __init__(self, loop: Loop, batches: list[Batch], scale: float) -> None:
        self.model: torch.nn.Module = loop.module
        self.optimizer: torch.optim.Optimizer = loop.torch_optimizer
        self._loop, self._batches, self._scale = loop, batches, scale

    def step(self) -> None:
        """One optimizer step on the current gradients (through the fp16 grad scaler, if any)."""
        self._loop.stepper.step()

    def zero_grad(self) -> None:
        self._loop.stepper.zero_grad(set_to_none=True)

    def recompute(self) -> torch.Tensor:
        """Forward and backward again over this update's micro-batches (the same inputs and
        targets, after every transform), adding to the gradients; returns the mean loss."""
        if self._loop.accelerator.scaler is not None:
            raise HpplugError("step.recompute() cannot run under fp16 loss scaling (the scaler unscales once per "
                              "step): use --mixed-precision bf16 or no")
        results = forward_backward(self._loop, self._batches, self._scale)
        return torch.stack([losses.sum() for _, losses in results]).sum() / sum(len(b.y) for b in self._batches)


def labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices of targets given as indices or as probabilities (the dominant class)."""
    return y if y.ndim == 1 else y.argmax(1)


def forward_backward(loop: Loop, batches: list[Batch], scale: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`micro_step` over each of an update's micro-batches; ``(logits, losses)`` of each."""
    return [micro_step(loop, batch, i == len(batches) - 1, scale) for i, batch in enumerate(batches)]


def micro_step(loop: Loop, batch: Batch, last: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss and backward of one micro-batch; gradients are synchronized between
    processes on the ``last`` one only. Returns ``(logits, per-sample losses)``, detached."""
    acc = loop.accelerator
    with acc.no_sync(loop.model) if not last and acc.num_processes > 1 else nullcontext():
        logits = loop.model(batch.x)
        losses = loop.hook.hpplug_loss(logits=logits, targets=batch.y, batch=batch)
        if losses is None:
            losses = F.cross_entropy(logits, batch.y, reduction="none")
        acc.backward(losses.sum() * scale)
    return logits.detach(), losses.detach()


def seed_draws(loop: Loop, update: int) -> None:
    """Seed ``loop.batch_generator`` for ``update``: augmentation draws are a pure function of
    (seed, process, update), so a resumed or repeated run draws alike."""
    loop.batch_generator.manual_seed(loop.config.seed * 1_000_003 + update * 131 + loop.accelerator.process_index)


def train_update(loop: Loop, feed: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], size: int) -> None:
    """One optimizer update over the next ``grad_accum`` micro-batches of ``feed`` (``size``
    samples over all processes)."""
    c, acc, sums, train = loop.config, loop.accelerator, loop.state.window, loop.data.train
    seed_draws(loop, loop.progress.update)
    scale, batches = acc.num_processes / size, []
    for i in range(c.grad_accum):  # each micro-batch: transforms, forward, loss, backward (hookspecs.ORDER)
        x, y, index = next(feed)
        batch = Batch(train.inputs(x), y, True, loop.batch_generator, index=index, num_classes=loop.data.num_classes)
        loop.hook.hpplug_transform_batch(batch=batch, progress=loop.progress)
        batch.x, batch.y = batch.x.to(acc.device, non_blocking=True), batch.y.to(acc.device, non_blocking=True)
        logits, losses = micro_step(loop, batch, i == c.grad_accum - 1, scale)
        sums[0] += losses.sum().float()
        sums[1] += (logits.argmax(1) == labels(batch.y)).sum()
        sums[2] += len(batch.y)
        batches.append(batch)  # kept for Step.recompute
    if acc.scaler is not None:
        acc.unscale_gradients()  # plugins see the true gradients (grad-clip); the scaler skips its own unscale
    loop.hook.hpplug_before_optimizer_step(model=loop.module, progress=loop.progress)
    step = Step(loop, batches, scale)
    if not loop.hook.hpplug_optimizer_step(step=step, progress=loop.progress):
        step.step()
    loop.stepper.zero_grad(set_to_none=True)
    loop.state.count_update()
    loop.hook.hpplug_after_optimizer_step(model=loop.module, progress=loop.progress)


def stepper(loop: Loop) -> torch.optim.Optimizer:
    """The optimizer to step: torch's own when Accelerate's wrapper would add nothing.

    The wrapper matters for a gradient scaler (fp16), XLA and DeepSpeed; otherwise its
    per-call package and signature checks cost ~8% of an update of a small model.
    """
    from accelerate.utils import DistributedType

    plain = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    acc = loop.accelerator
    if acc.scaler is None and acc.distributed_type in plain:
        return loop.torch_optimizer
    return loop.optimizer
