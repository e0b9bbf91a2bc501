"""``onecycle``: the 1cycle policy, torch ``OneCycleLR`` with ``base_lr`` as ``max_lr``.

The LR rises from ``base_lr / div_factor`` to ``base_lr`` over the first ``pct_start`` of
training, then anneals to ``base_lr / (div_factor * final_div_factor)``. The high-LR middle
acts as a regulariser and allows fast training ("super-convergence", Smith & Topin 2017).
Momentum is not cycled: the optimizer keeps ``--momentum`` (torch: ``cycle_momentum=False``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from hpplug import HpplugError, Param, Plugin, Progress, hookimpl


def anneal_cos(start: float, end: float, pct: float) -> float:
    """Cosine from ``start`` to ``end`` as ``pct`` goes 0 -> 1 (torch ``_annealing_cos``)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def anneal_linear(start: float, end: float, pct: float) -> float:
    """Straight line from ``start`` to ``end`` (torch ``_annealing_linear``)."""
    return (end - start) * pct + start


ANNEALERS: dict[str, Callable[[float, float, float], float]] = {"cos": anneal_cos, "linear": anneal_linear}


def onecycle_factor(
    step: int,
    total_steps: int,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
    anneal_strategy: str = "cos",
) -> float:
    """OneCycleLR's two-phase schedule as a multiple of ``max_lr``, phase arithmetic as torch.

    Phase 1 ends at step ``float(pct_start * total) - 1``, phase 2 at ``total - 1``; a
    step past the end keeps the last value (torch raises instead).
    """
    anneal = ANNEALERS[anneal_strategy]
    initial = 1.0 / div_factor
    phases = [
        (float(pct_start * total_steps) - 1, initial, 1.0),
        (total_steps - 1, 1.0, initial / final_div_factor),
    ]
    step = min(step, total_steps - 1)
    start_step = 0.0
    for i, (end_step, start, end) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            span = end_step - start_step
            # torch divides by zero here (pct_start * total == 1); the phase's end value is the limit.
            pct = (step - start_step) / span if span else 1.0
            return anneal(start, end, pct)
        start_step = end_step
    raise AssertionError("unreachable: the last phase always matches")


class OneCycle(Plugin):
    """Warm up to ``base_lr`` then anneal far below it, once over the run (``OneCycleLR``)."""

    kind = "scheduler"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    slot = "lr-schedule"
    params = {
        "pct_start": Param(float, 0.3, "fraction of the run spent raising the LR", min=0.0, max=1.0),
        "div_factor": Param(float, 25.0, "initial LR = base_lr / div_factor, > 0"),
        "final_div_factor": Param(float, 1e4, "final LR = initial LR / final_div_factor, > 0"),
        "anneal_strategy": Param(str, "cos", "shape of both phases: cos or linear", choices=("cos", "linear")),
        "interval": Param(
            str,
            "update",
            "'update' = one step per optimizer update (OneCycleLR's usual use); "
            "'epoch' = one step per epoch, total_steps = epochs",
            choices=("epoch", "update"),
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        for name in ("div_factor", "final_div_factor"):
            if getattr(self, name) <= 0:
                raise HpplugError(f"--onecycle.{name} must be > 0, got {getattr(self, name)}")

    @hookimpl
    def hpplug_lr_factor(self, progress: Progress, base_lr: float) -> float:
        if self.interval == "update":
            step, total = progress.update, progress.total_updates
        else:
            step, total = progress.epoch, progress.epochs
        return onecycle_factor(
            step, total, self.pct_start, self.div_factor, self.final_div_factor, self.anneal_strategy
        )
