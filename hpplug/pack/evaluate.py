"""Evaluation of several members at once: ``hpplug.loop.evaluate`` under ``vmap``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

from hpplug.feed import Source
from hpplug.loop import _with_index
from hpplug.pack.member import Member
from hpplug.pack.packed import Pack
from hpplug.pack.share import assemble, by_batch, labels
from hpplug.plugin import Batch

Metrics = dict[Member, dict[str, Any]]


def evaluate(pack: Pack, members: list[Member], source: Source, split: str, metrics: Metrics) -> None:
    """``hpplug.loop.evaluate`` for ``members`` at once: each one's ``<split>/loss``,
    ``<split>/accuracy`` and ``<split>/samples`` added to ``metrics[member]``."""
    for m in members:
        m.loop.model.eval()
        pack.model_hook(m, "hpplug_evaluation_start", split=split)
    pack.restack()
    members = [m for m in members if m.exit is None]
    if members:
        rows = [pack.members.index(m) for m in members]
        groups = by_batch(members, train=False)
        sums = torch.zeros(len(members), 3, device=pack.device, dtype=torch.float64)
        share = torch.arange(len(source))
        with torch.no_grad():
            for x, y, index in _with_index(source, list(share.split(members[0].config.eval_batch_size)), pack.device):
                made: dict[Member, Batch] = {}
                for group in groups:
                    batch = Batch(source.inputs(x), y, False, None, index=index, num_classes=pack.data.num_classes)
                    with pack.own(*group):
                        group[0].loop.hook.hpplug_transform_batch(batch=batch, progress=group[0].loop.progress)
                    batch.x, batch.y = batch.x.to(pack.device), batch.y.to(pack.device)
                    made.update((m, batch) for m in group)
                inputs, targets, shared = assemble(members, made.__getitem__)
                logits = pack.stack.forward(inputs, shared, rows=rows)
                losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1), reduction="none")
                sums[:, 0] += losses.view(logits.shape[:2]).sum(1).double()
                sums[:, 1] += (logits.argmax(-1) == labels(targets)).sum(1)
                sums[:, 2] += logits.shape[1]
        for m, (loss, correct, count) in zip(members, sums.tolist()):
            metrics[m].update({f"{split}/loss": loss / count, f"{split}/accuracy": correct / count,
                               f"{split}/samples": int(count)})
    for m in members:
        pack.model_hook(m, "hpplug_evaluation_end", metrics=MappingProxyType(metrics[m]), split=split)
        m.loop.model.train()
    pack.restack()
