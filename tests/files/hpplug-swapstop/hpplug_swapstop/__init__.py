"""``swap-stop``: an exponential moving average of the weights that is evaluated in their place
and kept at the end, and a stop when the validation loss stops improving.

Written as a third party would, from ``from hpplug import ...`` and torch alone: it proves
that the public hooks suffice for an EMA-style weight swap (Composer's EMA) and early
stopping. It logs, at each epoch's end, a checksum of the weights it was validated with and
of the trained ones, so that a test can tell which weights the validation saw.
"""

from __future__ import annotations

import torch

from hpplug import Param, Plugin, hookimpl


def checksum(weights: list[torch.Tensor]) -> float:
    """The sum of every weight, in float64."""
    return float(sum(w.detach().double().sum() for w in weights))


class SwapStop(Plugin):
    """EMA of the parameters, swapped in for evaluation and copied in at the end; stops when
    val/loss has not improved by ``delta`` for ``patience`` epochs."""

    kind = "method"
    params = {
        "decay": Param(float, 0.9, "weight of the average's past at each update", min=0.0, max=1.0),
        "patience": Param(int, 1, "epochs without an improvement of val/loss before stopping", min=1),
        "delta": Param(float, 0.0, "decrease of val/loss that counts as an improvement", min=0.0),
    }

    def __init__(self, **values):
        super().__init__(**values)
        self.average: list[torch.Tensor] | None = None
        self.live: list[torch.Tensor] | None = None  # the trained weights while the average is swapped in
        self.best: float | None = None  # the lowest val/loss so far
        self.waited, self.trained = 0, False
        self.sums: dict[str, float] = {}  # checksums of the last validation's weights

    @hookimpl
    def hpplug_train_start(self, model, progress, config):
        device = next(model.parameters()).device  # a resumed average is read back on the CPU
        if self.average is not None:
            self.average = [a.to(device) for a in self.average]

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        with torch.no_grad():
            weights = [p.detach() for p in model.parameters()]
            if self.average is None:
                self.average = [w.clone() for w in weights]
            else:
                for average, weight in zip(self.average, weights):
                    average.mul_(self.decay).add_(weight, alpha=1 - self.decay)

    @hookimpl
    def hpplug_evaluation_start(self, model, split, progress):
        if self.average is None or self.trained:  # after training the model holds the average already
            return
        params = list(model.parameters())
        self.live = [p.detach().clone() for p in params]
        self._copy(self.average, params)
        self.sums = {"swap-stop/evaluated": checksum(params), "swap-stop/trained": checksum(self.live)}

    @hookimpl
    def hpplug_evaluation_end(self, metrics, model, split, progress):
        if self.live is not None:
            self._copy(self.live, list(model.parameters()))
            self.live = None

    @hookimpl
    def hpplug_epoch_end(self, metrics, progress):
        return dict(self.sums) or None

    @hookimpl
    def hpplug_should_stop(self, metrics, progress):
        loss = metrics.get("val/loss")
        if loss is None:
            return None
        if self.best is None or loss < self.best - self.delta:
            self.best, self.waited = loss, 0
            return None
        self.waited += 1
        if self.waited < self.patience:
            return None
        return f"val/loss has not improved by {self.delta} for {self.waited} epochs (best {self.best:.4f})"

    @hookimpl
    def hpplug_train_end(self, model, progress, train_inputs):
        if self.average is not None:
            self._copy(self.average, list(model.parameters()))
        self.trained = True

    @staticmethod
    def _copy(source: list[torch.Tensor], target: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for s, t in zip(source, target):
                t.copy_(s)

    def state_dict(self):
        return {"average": self.average, "best": self.best, "waited": self.waited, "trained": self.trained}

    def load_state_dict(self, state):
        self.average, self.best = state["average"], state["best"]
        self.waited, self.trained = state["waited"], state["trained"]
