"""``warmup``: linear LR warmup that multiplies any decay schedule.

Early updates of a randomly initialised network have large, noisy gradients; starting at
``start_factor * base_lr`` and ramping linearly to ``base_lr`` keeps them from blowing up.
It is what makes the linear scaling rule work at large batch sizes (Goyal et al. 2017).
``composable = True``: it shares the ``lr-schedule`` slot with one decay schedule and the
engine multiplies the two factors.
"""

from __future__ import annotations

from hpplug import Param, Plugin, Progress, hookimpl

from hpplug_schedulers._time import interval_param, schedule_time


def warmup_factor(t: float, warmup_epochs: float, start_factor: float) -> float:
    """``start + (1 - start) * min(t, warmup) / warmup``; 1 when there is no warmup."""
    if warmup_epochs <= 0:
        return 1.0
    return start_factor + (1 - start_factor) * min(t, warmup_epochs) / warmup_epochs


class Warmup(Plugin):
    """Ramp the LR linearly from ``start_factor * base_lr`` to ``base_lr`` (torch ``LinearLR``)."""

    kind = "scheduler"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    slot = "lr-schedule"
    composable = True
    params = {
        "warmup_epochs": Param(
            float, 1.0, "length of the ramp in epochs (fractions allowed); 0 disables warmup", min=0.0
        ),
        "start_factor": Param(
            float, 0.1, "LR multiplier at the first update (LinearLR start_factor)", min=0.0, max=1.0
        ),
        "interval": interval_param("update"),
    }

    @hookimpl
    def hpplug_lr_factor(self, progress: Progress, base_lr: float) -> float:
        t = schedule_time(progress, self.interval)
        return warmup_factor(t, self.warmup_epochs, self.start_factor)
