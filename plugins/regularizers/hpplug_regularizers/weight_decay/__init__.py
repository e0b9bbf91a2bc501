"""``weight-decay``: L2 weight decay on the weights only, through optimizer parameter groups.

Decay pulls weights towards zero and so limits the effective capacity. Biases and the scale
and shift of normalization layers gain nothing from it (they do not multiply inputs, or
are undone by the next normalization) and decaying them can hurt, so by default every
parameter with ``ndim <= 1`` goes in a group with ``weight_decay = 0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from hpplug import Param, Plugin, hookimpl

if TYPE_CHECKING:
    from hpplug.config import RunConfig


def decay_groups(model: nn.Module, weight_decay: float, exclude_norm_and_bias: bool) -> list[dict[str, Any]]:
    """``[{decayed, weight_decay}, {ndim <= 1, 0.0}]`` without empty groups."""
    params = list(model.parameters())
    if not exclude_norm_and_bias:
        groups = [{"params": params, "weight_decay": weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    return [g for g in groups if g["params"]]


class WeightDecay(Plugin):
    """Give the optimizer weight decay, sparing biases and norm parameters by default."""

    kind = "regularizer"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    slot = "param-groups"
    params = {
        "weight_decay": Param(float, 5e-4, "decay coefficient of the optimizer's weight_decay", min=0.0),
        "exclude_norm_and_bias": Param(
            bool, True, "put parameters with ndim <= 1 (biases, norm weights) in a group without decay"
        ),
    }

    @hookimpl
    def hpplug_param_groups(self, model: nn.Module, config: RunConfig) -> list[dict[str, Any]]:
        return decay_groups(model, self.weight_decay, self.exclude_norm_and_bias)
