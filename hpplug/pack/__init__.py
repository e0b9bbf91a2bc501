"""Packed trials: several runs of one sweep trained at once, in one process, as one model.

The members' parameters are stacked ``[K, ...]`` and trained by one vectorized forward,
backward and optimizer step (``torch.func``: ``functional_call`` under ``vmap``); everything
else stays each member's own and as it is alone: its seed and initialization, LR schedule,
optimizer settings, dropout p and masks, loss, augmentation draws, data order, metrics,
record, checkpoints, W&B run and status. A trial trained in a pack gives the result it
gives alone (up to floating-point rounding).

- :func:`why_not_packable` (``support``): why some trials cannot share a pack, or None.
- :func:`run_pack` (``run``): train them, one ``hpplug.engine.RunResult`` per member.
- A member stops early on a ``<record>/stop-request`` file (``member``).

Modules: ``support`` (what packs), ``run`` (set-up and ends), ``member`` (one trial),
``packed`` (the members in training), ``train`` (the loop), ``evaluate``, ``share`` (who
gets the same batches), ``stack`` (stacked weights and buffers, forward), ``dropout`` (each
member's masks), ``optim`` (SGD/Adam/AdamW over the stack), ``rng`` (each member's random
numbers).
"""

from __future__ import annotations

from typing import Any

from hpplug.pack.support import REFUSED, STOP_REQUEST, MemberSpec, PackRefused, packable, start_update, why_not_packable

__all__ = ["MemberSpec", "PackRefused", "REFUSED", "STOP_REQUEST", "packable", "run_pack", "start_update",
           "why_not_packable"]


def __getattr__(name: str) -> Any:
    """``run_pack`` imports torch: only when it is used."""
    if name == "run_pack":
        from hpplug.pack.run import run_pack

        return run_pack
    raise AttributeError(f"module 'hpplug.pack' has no attribute {name!r}")
