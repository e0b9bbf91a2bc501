"""``step``: step decay, the seed article's ``StepLR(step_size=30, gamma=0.1)``.

The LR is multiplied by ``gamma`` every ``step_size`` epochs. It is the classic ImageNet
recipe: long plateaus at a fixed LR, then a sharp drop once progress stalls.
"""

from __future__ import annotations

import math
from typing import Any

from hpplug import HpplugError, Param, Plugin, Progress, hookimpl, warn

from hpplug_schedulers._time import interval_param, schedule_time


def step_factor(t: float, step_size: int, gamma: float) -> float:
    """``gamma ** floor(t / step_size)``: torch StepLR's closed form."""
    return gamma ** math.floor(t / step_size)


def never_steps(step_size: int, epochs: int) -> str:
    """The warning for a step size the run never reaches: the LR stays at its base value."""
    fix = (f"set --step.step_size below {epochs}" if epochs > 1
           else "a one-epoch run never reaches a step: train for more epochs or use --plugin cosine")
    return f"--step.step_size {step_size} is not smaller than the run's {epochs} epochs: the LR never decays; {fix}"


class Step(Plugin):
    """Multiply the LR by ``gamma`` every ``step_size`` epochs (torch ``StepLR``)."""

    kind = "scheduler"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    slot = "lr-schedule"
    params = {
        "step_size": Param(int, 30, "epochs between two decays (StepLR step_size)", min=1),
        "gamma": Param(float, 0.1, "factor applied to the LR at every decay, > 0 (StepLR gamma)"),
        "interval": interval_param("epoch"),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        if self.gamma <= 0:
            raise HpplugError(f"--step.gamma must be > 0, got {self.gamma}")

    @hookimpl
    def hpplug_lr_factor(self, progress: Progress, base_lr: float) -> float:
        if self.step_size >= progress.epochs:
            warn(never_steps(self.step_size, progress.epochs))
        return step_factor(schedule_time(progress, self.interval), self.step_size, self.gamma)
