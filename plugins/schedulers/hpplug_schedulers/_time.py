"""The time axis shared by the schedules: whole epochs, or epochs measured per update."""

from __future__ import annotations

from hpplug import Param, Progress

INTERVALS = ("epoch", "update")


def interval_param(default: str) -> Param:
    """The ``interval`` parameter every schedule takes, with its own default."""
    return Param(
        str,
        default,
        "when the LR changes: 'epoch' = once per epoch, as torch's scheduler.step() after "
        "each epoch; 'update' = the same curve (time in epochs) evaluated at every optimizer update",
        choices=INTERVALS,
    )


def schedule_time(progress: Progress, interval: str) -> float:
    """Time in epochs: completed epochs (``epoch``) or ``update / updates_per_epoch`` (``update``)."""
    if interval == "epoch":
        return progress.epoch
    return progress.epoch_fraction
