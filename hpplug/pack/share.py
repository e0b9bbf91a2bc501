"""Which members of a pack get the same batches, and one input for all of them.

Members with the same transforms (plugins and values) get the same evaluation batches; in
training, also the same seed (sample order and augmentation draws). One batch is made
per group, by the group's first member's plugins, and shared: ``vmap`` takes it with
``in_dims=None`` when every member shares it, else the members' batches are stacked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hpplug.pack.member import Member
from hpplug.plugin import Batch


def signature(m: Member, train: bool) -> tuple[Any, ...]:
    """What decides a member's batches: its seed (training) and its transforms' plugins and values."""
    impls = m.loop.hook.hpplug_transform_batch.get_hookimpls()
    plugins = tuple((i.plugin_name, repr(getattr(i.plugin, "values", i.plugin))) for i in impls)
    return (m.config.seed, plugins) if train else plugins


def by_batch(members: list[Member], train: bool) -> list[list[Member]]:
    """The members in groups that get the same batches, in the members' order."""
    found: dict[Any, list[Member]] = {}
    for m in members:
        found.setdefault(signature(m, train), []).append(m)
    return list(found.values())


def assemble(members: list[Member],
             batch_of: Callable[[Member], Batch]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Inputs and targets of every member: one shared batch, or ``[K, n, ...]`` stacks."""
    batches = [batch_of(m) for m in members]
    if all(b is batches[0] for b in batches):
        return batches[0].x, batches[0].y.expand(len(members), *batches[0].y.shape), True
    soft = any(b.y.ndim == 2 for b in batches)
    targets = torch.stack([b.soft_targets() if soft else b.y for b in batches])
    return torch.stack([b.x for b in batches]), targets, False


def labels(targets: torch.Tensor) -> torch.Tensor:
    """``hpplug.step.labels`` for ``[K, n]`` indices or ``[K, n, classes]`` probabilities."""
    return targets if targets.ndim == 2 else targets.argmax(-1)
