"""``cnn``: a small convolutional network for small images (digits, MNIST, CIFAR).

Two 3x3 conv blocks (``width`` then ``2*width`` channels, each ReLU and 2x2 max pooling),
then one hidden layer: ``Flatten -> Linear -> ReLU -> Linear``. The defaults are hpplug's
original ``cnn`` layer for layer, so earlier recipes keep their numbers; it is an
``nn.Sequential`` so ``dropout`` finds the hidden Linear.
"""

from __future__ import annotations

from torch import nn

from hpplug import HpplugError, Model, Param


class Cnn(Model):
    """Conv(width) -> pool -> Conv(2*width) -> pool -> Linear(hidden) -> Linear(classes)."""

    packable = True  # built per trial and stacked: it trains in a pack (hpplug.pack)
    params = {
        "hidden": Param(int, 500, "hidden units of the fully connected layer", min=1),
        "width": Param(int, 32, "channels of the first conv; the second has 2*width", min=1),
    }

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
        if len(input_shape) != 3 or min(input_shape) < 1 or min(input_shape[1:]) < 4:
            raise HpplugError(f"cnn needs images (channels, height, width) of at least 4x4 pixels, got input "
                              f"shape {tuple(input_shape)}: use --model mlp for other inputs")
        channels, height, width = input_shape
        return nn.Sequential(
            nn.Conv2d(channels, self.width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(self.width, 2 * self.width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * self.width * (height // 4) * (width // 4), self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, num_classes),
        )
