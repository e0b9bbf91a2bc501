"""``early-stopping``: end training once a metric has stopped improving for ``patience`` epochs.

Training past the point where the validation score stops improving costs time and, without
weight decay or a schedule that ends low, overfits. The run then ends with status
``stopped`` and the reason in its summary; the test split is still evaluated, on the last
weights (the best epoch is named in the reason: its weights are not kept).

Its state (the best value, its epoch, the epochs since) is checkpointed, so a run resumed in
the middle of a patience window stops where the uninterrupted run would.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from hpplug import HpplugError, Param, Plugin, Progress, hookimpl


class EarlyStopping(Plugin):
    """Asks the run to stop (``hpplug_should_stop``) after ``patience`` epochs without an
    improvement of more than ``min_delta`` in ``metric``."""

    kind = "stopping"
    packable = True  # hooks are per trial: it stops its member only (hpplug.pack)
    params = {
        "metric": Param(str, "val/accuracy", "metric to watch: any of an epoch's metrics (val/loss, a plugin's ...)"),
        "mode": Param(str, "auto", "max: higher is better; min: lower is better; auto: min for names with 'loss', "
                                   "else max", choices=("auto", "max", "min")),
        "patience": Param(int, 3, "epochs without improvement before the run stops", min=1),
        "min_delta": Param(float, 0.0, "smallest change that counts as an improvement", min=0.0),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.best: float | None = None  # None until the metric was first a finite number
        self.best_epoch = 0
        self.bad_epochs = 0

    @property
    def maximize(self) -> bool:
        return self.mode == "max" or (self.mode == "auto" and "loss" not in self.metric)

    def improved(self, value: float) -> bool:
        """More than ``min_delta`` better than the best so far; NaN never improves."""
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.maximize else value < self.best - self.min_delta

    @hookimpl
    def hpplug_should_stop(self, metrics: Mapping[str, float], progress: Progress) -> str | None:
        if self.metric not in metrics:
            raise HpplugError(f"--early-stopping.metric {self.metric!r} is not among this run's metrics after epoch "
                              f"{progress.epoch}; set it to one of: {', '.join(sorted(metrics))}")
        value = float(metrics[self.metric])
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, progress.epoch, 0
            return None
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return None
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        best = f"best {self.best:.4f} at epoch {self.best_epoch}" if self.best is not None else "never a finite number"
        epochs = f"{self.bad_epochs} epoch{'s' if self.bad_epochs != 1 else ''}"
        return f"{self.metric} did not improve{by} for {epochs} ({best})"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values; ``ValueError`` for anything else (read from disk)."""
        best = state.get("best") if isinstance(state, dict) else None
        if not (isinstance(state, dict) and (best is None or (type(best) in (int, float) and math.isfinite(best)))
                and all(type(state.get(k)) is int and state[k] >= 0 for k in ("best_epoch", "bad_epochs"))):
            raise ValueError("it is not early-stopping's best value, best epoch and count of epochs without "
                             "improvement")
        self.best, self.best_epoch, self.bad_epochs = best, state["best_epoch"], state["bad_epochs"]
