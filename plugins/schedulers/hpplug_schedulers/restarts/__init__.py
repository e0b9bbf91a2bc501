"""``restarts``: cosine annealing with warm restarts (SGDR), torch ``CosineAnnealingWarmRestarts``.

Each cycle anneals the LR from ``base_lr`` to ``eta_min`` along half a cosine, then jumps
back to ``base_lr``; cycle ``i`` lasts ``t_0 * t_mult**i`` epochs. The restarts let the
optimizer leave a sharp minimum and give anytime snapshots at the end of every cycle.
"""

from __future__ import annotations

import math

from hpplug import Param, Plugin, Progress, hookimpl

from hpplug_schedulers._time import interval_param, schedule_time


def cycle_position(t: float, t_0: int, t_mult: int) -> tuple[float, float]:
    """``(T_cur, T_i)``: time since the last restart and the current cycle's length.

    Walks the cycles exactly (no ``log``), so integer epochs land on restarts without
    rounding error; torch's per-epoch ``step()`` gives the same values.
    """
    if t_mult == 1:
        return t % t_0, t_0
    start, length = 0, t_0
    while t >= start + length:
        start += length
        length *= t_mult
    return t - start, length


class Restarts(Plugin):
    """Cosine cycles of ``t_0 * t_mult**i`` epochs, each restarting at ``base_lr`` (SGDR)."""

    kind = "scheduler"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    slot = "lr-schedule"
    params = {
        "t_0": Param(int, 10, "epochs of the first cycle (T_0)", min=1),
        "t_mult": Param(int, 1, "each cycle is t_mult times longer than the previous one (T_mult)", min=1),
        "eta_min": Param(float, 0.0, "LR at the end of every cycle, in absolute LR units", min=0.0),
        "interval": interval_param("epoch"),
    }

    @hookimpl
    def hpplug_lr_factor(self, progress: Progress, base_lr: float) -> float:
        if base_lr == 0:
            return 1.0
        t_cur, t_i = cycle_position(schedule_time(progress, self.interval), self.t_0, self.t_mult)
        lr = self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
        return lr / base_lr
