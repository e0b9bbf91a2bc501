"""``hpplug.loop``'s training, for every member of a pack at once, in lockstep.

The same hooks in the same order, each called once per member with its own arguments
(``set_lr``, the sample order, the augmentation seed, logging, checkpoints, the stop rules
are hpplug.loop's own, per member); the forward, the loss's backward and the optimizer
step run once for all; so does the evaluation (:mod:`hpplug.pack.evaluate`). Members that
get the same batches share one (:mod:`hpplug.pack.share`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from hpplug.console import EpochBar, format_metrics
from hpplug.loop import (Stopped, _with_index, end_epoch, epoch_order, epoch_train_metrics, log_update,
                         micro_batches, set_lr, train_inputs, update_checkpoint_due)
from hpplug.pack.evaluate import Metrics, evaluate
from hpplug.pack.member import Member
from hpplug.pack.packed import Pack
from hpplug.pack.share import assemble, by_batch, labels
from hpplug.plugin import Batch
from hpplug.step import seed_draws


def fit(pack: Pack, show_progress: bool) -> None:
    """Train every member to its end, as ``hpplug.loop.fit`` then ``final_test`` do alone."""
    for m in pack.members:
        if not m.loop.state.trained:
            m.loop.model.train()
            pack.model_hook(m, "hpplug_train_start", config=m.loop.config)
    pack.restack()
    pack.settle()
    while pack.members:
        end_training(pack, [m for m in pack.members if m.done_training])
        if not pack.members:
            return
        for m in pack.members:
            with pack.own(m):
                m.loop.hook.hpplug_epoch_start(progress=m.loop.progress)
        pack.settle()
        lead = pack.members[0].loop
        with EpochBar(lead.progress, lead.config.global_batch_size * len(pack.members), enabled=show_progress) as bar:
            metrics = train_epoch(pack, bar)
            if pack.data.val is not None and pack.members:
                with pack.refusing("evaluation"):
                    evaluate(pack, pack.members, pack.data.val, "val", metrics)
            for m in pack.members:
                if m.exit is None:  # a member whose evaluation failed ends without this epoch
                    with pack.own(m):
                        epoch_end(m, metrics[m], show_progress)
                if not m.done_training:
                    m.honour_stop_request()
        pack.settle()


def epoch_end(m: Member, metrics: dict[str, Any], show_progress: bool) -> None:
    """``hpplug.loop.end_epoch`` for one member, its line named by its run id."""
    def show(shown: dict[str, Any]) -> None:
        if show_progress:
            print(f"{m.run_id} epoch {m.loop.progress.epoch}/{m.loop.progress.epochs}  {format_metrics(shown)}",
                  file=sys.stderr)

    if end_epoch(m.loop, metrics, show):
        m.save()


def end_training(pack: Pack, leaving: list[Member]) -> None:
    """Training is over for ``leaving``: ``hpplug_train_end``, the last checkpoint, the
    test split, and their runs' end."""
    for m in leaving:
        if not m.loop.state.trained:
            pack.model_hook(m, "hpplug_train_end", train_inputs=lambda loop=m.loop: train_inputs(loop))
            with pack.own(m):
                if m.exit is None:
                    m.loop.state.trained = True
                    if m.loop.every:
                        m.save()
    pack.restack()
    done = [m for m in leaving if m.exit is None]
    tests: Metrics = {m: {} for m in done}
    if pack.data.test is not None and done:
        with pack.refusing("evaluation"):
            evaluate(pack, done, pack.data.test, "test", tests)
    for m in done:
        with pack.own(m):
            if tests[m]:
                m.loop.tracker.log(tests[m], step=m.loop.progress.update)
            m.final = {**(m.loop.state.history[-1] if m.loop.state.history else {}), **tests[m]}
            m.leave("stopped" if m.loop.state.stop_reason else "finished")
    pack.settle()


def train_epoch(pack: Pack, bar: EpochBar) -> Metrics:
    """One epoch of every member (``hpplug.loop.train_epoch``); returns each one's metrics."""
    lead = pack.members[0].loop
    c, p = lead.config, lead.progress
    n, per_update = len(pack.data.train), c.global_batch_size
    first = p.update - p.epoch * p.updates_per_epoch
    leaders = {m.config.seed: m for m in reversed(pack.members)}
    feeds = {seed: _with_index(pack.data.train, micro_batches(m.loop, epoch_order(n, seed, p.epoch), first),
                               pack.device) for seed, m in leaders.items()}
    for m in pack.members:
        m.lr = m.loop.base_lrs[0]
    start = time.perf_counter()
    try:
        for u in range(first, p.updates_per_epoch):
            for m in pack.members:
                with pack.own(m):
                    m.lr = set_lr(m.loop)
            pack.notice_frozen()
            pack.settle()
            if not pack.members:
                return {}
            with pack.refusing("update"):
                update(pack, feeds, min(per_update, n - u * per_update))
            bar.update(1)
            start = after_update(pack, start)
            if pack.stop is not None and pack.stop.reason is not None:
                raise Stopped(pack.stop.reason, pack.stop.signum)
            pack.settle()
            if pack.members:
                bar.set_postfix(lr=f"{pack.members[0].lr:.3g}")
    finally:
        pack.clock(start)
    return {m: epoch_train_metrics(m.loop, first, m.lr) for m in pack.members}


def after_update(pack: Pack, start: float) -> float:
    """Each member's logging, checkpoints and stop request after an update, in
    ``hpplug.loop.train_epoch``'s order; returns the restarted clock."""
    saving = []
    for m in pack.members:
        loop = m.loop
        update = loop.progress.update
        if m.exit is not None:  # its plugin failed in this update: the run ends there
            continue
        with pack.own(m):
            if update % loop.config.log_every == 0:
                log_update(loop, m.lr)
            if update_checkpoint_due(loop):
                saving.append(m)
    if saving:
        pack.clock(start)  # a checkpoint is not training time
        for m in saving:
            with pack.own(m):
                m.save()
        start = time.perf_counter()
    for m in pack.members:  # after every update, as SIGUSR1 stops a run alone
        m.honour_stop_request()
    return start


def update(pack: Pack, feeds: dict[int, Iterator[Any]], size: int) -> None:
    """One optimizer update of every member (``hpplug.step.train_update``), ``size`` samples
    each; each micro-batch through the transforms, the forward, the loss and the backward
    before the next one is transformed. A member whose plugin fails here still computes on
    another's batch until the update ends (the stack cannot shrink while gradients
    accumulate), then leaves."""
    members = pack.members
    lead = members[0].loop
    groups = by_batch(members, train=True)
    for group in groups:  # the group's transforms, and their generator, are its first member's
        seed_draws(group[0].loop, lead.progress.update)
    seeds = {m.config.seed for m in members}
    for _ in range(lead.config.grad_accum):
        raw = {seed: next(feed) for seed, feed in feeds.items() if seed in seeds}
        made: dict[Member, Batch] = {}
        for group in groups:
            loop = group[0].loop
            x, y, index = raw[loop.config.seed]
            batch = Batch(pack.data.train.inputs(x), y, True, loop.batch_generator, index=index,
                          num_classes=pack.data.num_classes)
            with pack.own(*group):
                loop.hook.hpplug_transform_batch(batch=batch, progress=loop.progress)
                batch.x = batch.x.to(pack.device, non_blocking=True)
                batch.y = batch.y.to(pack.device, non_blocking=True)
                made.update((m, batch) for m in group)
        if not made:
            return  # every member failed: none trains on
        spare = next(iter(made.values()))
        batch_of: Callable[[Member], Batch] = lambda m: made.get(m, spare)  # noqa: E731
        x, y, shared = assemble(members, batch_of)
        masks = pack.stack.dropout.masks([m.rng.generator for m in members], x, shared)
        logits = pack.stack.forward(x, shared, masks)
        losses = _losses(pack, logits, y, batch_of)
        (losses.sum() * (1 / size)).backward()
        pack.window[:, 0] += losses.detach().sum(1).float()
        pack.window[:, 1] += (logits.detach().argmax(-1) == labels(y)).sum(1)
        pack.window[:, 2] += logits.shape[1]
    for m in members:
        if m.exit is None:
            pack.model_hook(m, "hpplug_before_optimizer_step", stepping=True)
    pack.restack()
    pack.optimizer.step()
    pack.stack.zero_grad()
    for m in members:
        if m.exit is None:  # a member that failed before the step ends without it, as alone
            m.loop.state.count_update()
            pack.model_hook(m, "hpplug_after_optimizer_step")
    pack.restack()


def _losses(pack: Pack, logits: torch.Tensor, targets: torch.Tensor,
            batch_of: Callable[[Member], Batch]) -> torch.Tensor:
    """Per-sample losses ``[K, n]``: each member's ``hpplug_loss`` on its logits, or cross-entropy."""
    members = pack.members
    if not any(m.loop.hook.hpplug_loss.get_hookimpls() for m in members):
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1), reduction="none").view(logits.shape[:2])
    losses = []
    for k, m in enumerate(members):
        batch, own = batch_of(m), None
        if m.exit is None:
            with pack.own(m):
                own = m.loop.hook.hpplug_loss(logits=logits[k], targets=batch.y, batch=batch)
        losses.append(own if own is not None else F.cross_entropy(logits[k], batch.y, reduction="none"))
    return torch.stack(losses)
