"""``mlp``: the seed article's multilayer perceptron, for any input shape.

``Flatten -> Linear(in, hidden) -> ReLU -> Linear(hidden, classes)`` with PyTorch's default
initialization, built in that order so that a seed gives the article recipe's numbers. It is
an ``nn.Sequential`` so other plugins can find its layers by type (``dropout`` goes after the
ReLU that follows the hidden Linear).
"""

from __future__ import annotations

import math

from torch import nn

from hpplug import HpplugError, Model, Param


class Mlp(Model):
    """One hidden layer of ``hidden`` ReLU units on the flattened input."""

    packable = True  # built per trial and stacked: it trains in a pack (hpplug.pack)
    params = {"hidden": Param(int, 500, "hidden units (the seed article's 500)", min=1)}

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
        if not input_shape or min(input_shape) < 1:
            raise HpplugError(f"mlp needs inputs with at least one dimension of size >= 1, got input shape "
                              f"{tuple(input_shape)}")
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, num_classes),
        )
