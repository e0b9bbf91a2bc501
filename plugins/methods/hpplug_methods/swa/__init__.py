"""``swa``: stochastic weight averaging (Izmailov et al. 2018) from a chosen epoch on.

Late in training SGD bounces around a wide minimum; the equal-weight mean of the weights it
visits at each epoch's end lies nearer that minimum's centre and generalizes better. From
the SWA phase on, torch's ``SWALR`` annealing takes the LR from the value in effect when the
phase began to ``lr``, and an ``AveragedModel`` averages the weights once per epoch. At the
end the mean is copied into the model and, for a model with batch norm, the statistics are
recomputed over the training inputs (``update_bn``): averaged weights need their own.

hpplug sets the LR itself before every update from the plugins' factors, so SWALR is written
as a factor: a hook wrapper of ``hpplug_lr_factor`` that, in the SWA phase, replaces the other
plugins' factors. The LR it anneals from is recorded in the plugin's state, for resumes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generator, Iterator

import torch
from torch.optim.swa_utils import AveragedModel, get_swa_multi_avg_fn, update_bn

from hpplug import Param, Progress, hookimpl
from hpplug_methods._average import WeightAverage


def anneal(t: float, strategy: str) -> float:
    """SWALR's weight of the SWA LR at ``t`` in [0, 1] of the annealing: linear or half a cosine."""
    return t if strategy == "linear" else (1 - math.cos(math.pi * t)) / 2


class SWA(WeightAverage):
    """Mean of the epoch-end weights from ``start`` on, with SWALR's LR; batch norm recomputed."""

    label = "swa"
    params = {
        "start": Param(float, 0.75, "fraction of the epochs trained before SWA begins (at the next epoch "
                       "boundary, at the latest the last epoch's start)", min=0.0, max=1.0),
        "lr": Param(float, None, "the SWA LR (SWALR's swa_lr) in absolute units; default: the LR in effect "
                    "when SWA begins, held", min=0.0),
        "anneal_epochs": Param(int, 5, "epochs to anneal from the LR in effect to lr (SWALR's anneal_epochs; "
                               "0: at once)", min=0),
        "anneal_strategy": Param(str, "cos", "shape of the annealing (SWALR's anneal_strategy)",
                                 choices=("cos", "linear")),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.start_factor: float | None = None  # the LR factor in effect when SWA began

    def first_epoch(self, progress: Progress) -> int:
        """The first epoch of the SWA phase (0-based)."""
        return min(math.ceil(round(self.start * progress.epochs, 9)), progress.epochs - 1)

    def build(self, model: torch.nn.Module) -> AveragedModel:
        # Buffers averaged too: evaluations in the SWA phase get batch-norm statistics of the
        # average's kind; update_bn makes them exact at the end.
        return AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn(), use_buffers=True)

    @hookimpl(wrapper=True)
    def hpplug_lr_factor(self, progress: Progress, base_lr: float) -> Generator[None, list[float], list[float]]:
        """In the SWA phase, SWALR stepped once per epoch from the phase's start: epoch ``k``
        of the phase trains at ``lr * a + lr0 * (1 - a)``, ``a = anneal(min(1, k /
        anneal_epochs))``, ``lr0`` the LR of the phase's first update under the other factors."""
        factors = yield
        k = progress.epoch - self.first_epoch(progress)
        if k < 0:
            return factors
        if self.start_factor is None:
            self.start_factor = math.prod(factors)
        target = self.start_factor if self.lr is None else self.lr / base_lr
        t = 1.0 if self.anneal_epochs == 0 else min(1.0, k / self.anneal_epochs)
        a = anneal(t, self.anneal_strategy)
        return [target * a + self.start_factor * (1 - a)]

    @hookimpl
    def hpplug_after_optimizer_step(self, model: torch.nn.Module, progress: Progress) -> None:
        if progress.update % progress.updates_per_epoch == 0 and progress.epoch >= self.first_epoch(progress):
            self.update(model)

    @hookimpl
    def hpplug_train_end(self, model: torch.nn.Module, progress: Progress,
                         train_inputs: Callable[[], Iterator[torch.Tensor]]) -> None:
        super().hpplug_train_end(model, progress, train_inputs)
        if self.count:  # update_bn reads no input when the model has no batch norm
            update_bn(train_inputs(), model)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "start_factor": self.start_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        factor = state.get("start_factor")
        if not (factor is None or (type(factor) in (int, float) and math.isfinite(factor) and factor >= 0)):
            raise ValueError(f"start_factor {str(factor)[:40]!r} is not a finite LR factor >= 0")
        self.start_factor = factor
