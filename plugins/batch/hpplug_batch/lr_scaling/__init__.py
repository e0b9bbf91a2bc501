"""``lr-scaling``: scale the LR with the global batch size (linear or square-root rule).

A larger batch averages more samples, so its gradient is less noisy and there are fewer
updates per epoch; to keep making the same progress per epoch the LR must grow with it.
The linear rule (Goyal et al. 2017) multiplies the LR by ``global_batch / base_batch``; the
square-root rule (Krizhevsky 2014, Hoffer et al. 2017) by its square root, which keeps the
gradient noise constant and suits adaptive optimizers. ``--lr`` is then the LR *at*
``base_batch``, so a sweep over batch sizes compares like with like.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hpplug import Param, Plugin, hookimpl, warn

if TYPE_CHECKING:
    from hpplug.config import RunConfig

RULES = ("linear", "sqrt")


def lr_multiplier(global_batch: int, base_batch: int, rule: str) -> float:
    """``global / base`` (linear) or ``sqrt(global / base)`` (sqrt)."""
    ratio = global_batch / base_batch
    return ratio if rule == "linear" else math.sqrt(ratio)


class LRScaling(Plugin):
    """Multiply ``--lr`` by the linear or square-root ratio of global to base batch size."""

    kind = "batch-policy"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    slot = "lr-scaling"
    params = {
        "rule": Param(
            str,
            "linear",
            "linear: lr x global/base (Goyal et al. 2017); sqrt: lr x sqrt(global/base)",
            choices=RULES,
        ),
        "base_batch": Param(int, 64, "batch size at which --lr was tuned (the article's 64)", min=1),
    }

    @hookimpl
    def hpplug_adjust_config(self, config: RunConfig) -> None:
        if config.global_batch_size == self.base_batch:
            warn(f"--plugin lr-scaling does nothing: the global batch {config.global_batch_size} (--batch-size "
                 f"{config.batch_size} x {config.num_processes} process(es) x --grad-accum {config.grad_accum}) "
                 f"equals --lr-scaling.base_batch {self.base_batch}; it scales --lr only for a batch other than "
                 "base_batch, the batch size --lr was tuned at")
        config.lr = config.lr * lr_multiplier(config.global_batch_size, self.base_batch, self.rule)
