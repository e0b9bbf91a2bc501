"""``cosine``: cosine annealing, torch ``CosineAnnealingLR`` in closed form.

The LR follows half a cosine from ``base_lr`` down to ``eta_min`` over ``t_max`` epochs: a
large LR while the loss falls fast, then a smooth landing instead of StepLR's sharp drops.
The seed article calls this a "learning-rate restart"; it has no restart (see ``restarts``).
"""

from __future__ import annotations

import math

from hpplug import Param, Plugin, Progress, hookimpl

from hpplug_schedulers._time import interval_param, schedule_time


def cosine_lr(t: float, t_max: float, base_lr: float, eta_min: float) -> float:
    """``eta_min + (base_lr - eta_min) * (1 + cos(pi t / t_max)) / 2``."""
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2


class Cosine(Plugin):
    """Anneal the LR from ``base_lr`` to ``eta_min`` along half a cosine (``CosineAnnealingLR``)."""

    kind = "scheduler"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    slot = "lr-schedule"
    params = {
        "t_max": Param(
            int, None, "epochs of the half cosine (CosineAnnealingLR T_max); default: the run's epochs", min=1
        ),
        "eta_min": Param(float, 0.0, "LR reached at t_max, in absolute LR units (eta_min)", min=0.0),
        "interval": interval_param("epoch"),
    }

    @hookimpl
    def hpplug_lr_factor(self, progress: Progress, base_lr: float) -> float:
        if base_lr == 0:
            return 1.0  # nothing to scale; eta_min cannot be reached as a multiple of 0
        t_max = self.t_max if self.t_max is not None else progress.epochs
        t = schedule_time(progress, self.interval)
        return cosine_lr(t, t_max, base_lr, self.eta_min) / base_lr
