"""``ema``: an exponential moving average of the weights, evaluated and kept instead of them.

After every optimizer update the average moves a step ``1 - decay`` towards the trained
weights (torch's ``AveragedModel`` with ``get_ema_multi_avg_fn``), batch-norm statistics
included. The average smooths out the noise of the last updates, so it usually evaluates
better than the weights it follows (Polyak & Juditsky 1992; standard in timm, Composer).
Every evaluation uses it, and the end of training copies it into the model, so the test and
the final checkpoint are the average's.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from hpplug import Param, Progress, hookimpl
from hpplug_methods._average import WeightAverage


def warmup_decay(decay: float, n: int) -> float:
    """The decay of the update that averages in the ``n + 1``-th weights (``n >= 1``):
    ``min(decay, (1 + n) / (10 + n))``, TensorFlow's ``num_updates`` rule. Without it a decay of
    0.999 keeps the first weights' mark for thousands of updates: longer than short runs."""
    return min(decay, (1 + n) / (10 + n))


class EMA(WeightAverage):
    """Exponential moving average of the weights, updated after every optimizer step."""

    label = "ema"
    params = {
        "decay": Param(float, 0.999, "weight of the average kept at each update: 1 - decay goes to the new "
                       "weights (get_ema_multi_avg_fn's decay)", min=0.0, max=1.0),
        "warmup": Param(bool, True, "use min(decay, (1 + n) / (10 + n)) at the n-th update, so the average "
                        "forgets the first weights quickly (TensorFlow's num_updates)"),
    }

    def build(self, model: torch.nn.Module) -> AveragedModel:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)

    @hookimpl
    def hpplug_after_optimizer_step(self, model: torch.nn.Module, progress: Progress) -> None:
        if self.warmup and self.count:
            assert self.average is not None
            self.average.multi_avg_fn = get_ema_multi_avg_fn(warmup_decay(self.decay, self.count))
        self.update(model)
