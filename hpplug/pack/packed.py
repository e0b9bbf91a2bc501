"""The members still training, as one: stacked weights, optimizer state and running sums.

A member that leaves (finished, stopped, failed) closes its run at once and the others are
stacked again without it, so it costs nothing more; a failure in one member's plugin ends
that member only (:meth:`Pack.own`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate import Accelerator

from hpplug.checkpoint import StopRequests
from hpplug.errors import one_line
from hpplug.feed import RunData
from hpplug.pack.member import Member
from hpplug.pack.optim import PackedOptimizer
from hpplug.pack.stack import Stack
from hpplug.pack.support import PackRefused

# Hooks at the edges of training and evaluation (once per member and phase, not per update).
PHASE_HOOKS = frozenset({"hpplug_train_start", "hpplug_train_end", "hpplug_evaluation_start", "hpplug_evaluation_end"})


class Pack:
    """The members in training, in stack order, and what they share."""

    def __init__(self, members: list[Member], data: RunData, accelerator: Accelerator,
                 autocast: Callable[[], Any]) -> None:
        self.members = members
        self.data, self.device = data, accelerator.device
        self.stack = Stack([m.module for m in members], autocast)
        self.optimizer = PackedOptimizer(members[0].config.optimizer, self.stack, [m.loop.optimizer for m in members])
        self.window = self.epoch_sums = torch.zeros(0)
        self._link_sums()
        self.stop: StopRequests | None = None
        self.proven: set[str] = set()  # what went through once: a later failure of it is not the pack's
        self.stale: set[Member] = set()  # members whose hook replaced a tensor: stacked again by restack()
        for member in members:
            member.pack_size = len(members)

    def _link_sums(self) -> None:
        """Every member's running sums (loss, correct, count) as a row of one tensor."""
        for name in ("window", "epoch_sums"):
            stacked = torch.stack([getattr(m.loop.state, name) for m in self.members])
            setattr(self, name, stacked)
            for k, member in enumerate(self.members):
                setattr(member.loop.state, name, stacked[k])

    @contextmanager
    def own(self, *members: Member) -> Iterator[None]:
        """Run plugin code of ``members``: what it raises ends those members, not the pack."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - a plugin's failure, recorded in its run's summary
            for member in members:
                member.leave("failed", exc)

    @contextmanager
    def refusing(self, what: str) -> Iterator[None]:
        """Until ``what`` (an update, an evaluation) has gone through once, a failure of what
        the members share in it (an operation ``vmap`` cannot batch, K models that do not fit
        in memory together) is the pack's, not the trials' (``PackRefused``: a sweep trains
        them alone). A plugin's failure ends its member only (:meth:`own`), not this."""
        if what in self.proven:
            yield
            return
        try:
            yield
        except PackRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the vectorized computation raised
            raise PackRefused(f"its first {what} as one vectorized model failed: {type(exc).__name__}: "
                              f"{one_line(exc)}") from exc
        self.proven.add(what)

    def model_hook(self, m: Member, name: str, stepping: bool = False, **kwargs: Any) -> None:
        """Call hook ``name`` of ``m`` with its module as the model (within :meth:`own`); if it
        replaced a weight or gradient (``Stack.replaced``), :meth:`restack` stacks them again. A hook
        at a phase's edge runs with the member's global random state installed: a forward
        in training mode there (swa's ``update_bn``) draws dropout masks from it as alone;
        hooks of every update draw from ``batch.generator`` only (``hpplug.pack.support``)."""
        hook = getattr(m.loop.hook, name)
        with self.own(m), m.rng.installed(keep=True) if name in PHASE_HOOKS else contextlib.nullcontext():
            hook(model=m.module, progress=m.loop.progress, **kwargs)
            if hook.get_hookimpls() and self.stack.replaced(self.members.index(m), stepping):
                self.stale.add(m)

    def restack(self) -> None:
        """Stack again, once every member's hook of a round has run, if one replaced a
        tensor or froze (or unfroze) a weight (:meth:`model_hook`). Members whose frozen
        weights then differ from the others' (a schedule of their own) leave, refused
        (``PackRefused``: a sweep trains them alone); the same schedule for all stays packed."""
        if not self.stale:
            return
        changed, self.stale = self.stale, set()
        staying = [m for m in self.members if m.exit is None and not m.done_training]  # only those still stepping
        if staying:
            frozen = _frozen(next((m for m in staying if m not in changed), staying[0]).module)
            for m in staying:
                if _frozen(m.module) != frozen:
                    m.leave("failed", PackRefused(f"it froze or unfroze weights at update {m.loop.progress.update} "
                                                  "that the other trials of its pack train (or keep frozen)"))
        if any(m.exit is not None for m in self.members):
            self.settle()  # stacks the others again
        else:
            self.relink()

    def notice_frozen(self) -> None:
        """Before an update: weights frozen or unfrozen outside a model hook (a plugin that
        kept the model from ``hpplug_train_start``) are stacked again too (:meth:`restack`)."""
        self.stale.update(m for k, m in enumerate(self.members) if self.stack.frozen_changed(k))
        self.restack()

    def relink(self) -> None:
        """Stack the members' weights, gradients and optimizer states again."""
        self.stack.link([m.module for m in self.members])
        self.optimizer.link([m.loop.optimizer for m in self.members])

    def settle(self) -> None:
        """Close the runs of the members that must leave; stack the others again."""
        leaving = [m for m in self.members if m.exit is not None]
        if not leaving:
            return
        for member in leaving:
            member.finish(*member.exit)  # type: ignore[misc]
        self.members = [m for m in self.members if m.exit is None]
        if self.members:
            self.relink()
            self._link_sums()

    def clock(self, start: float) -> float:
        """Add the time since ``start`` to every member's epoch time; returns now."""
        now = time.perf_counter()
        for member in self.members:
            member.loop.state.epoch_time += now - start
        return now


def _frozen(module: torch.nn.Module) -> frozenset[str]:
    return frozenset(name for name, p in module.named_parameters() if not p.requires_grad)
