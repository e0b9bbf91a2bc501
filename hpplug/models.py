"""The models a run can train: the seed article's MLP and a small CNN.

Both are ``nn.Sequential`` so that plugins can find layers by type (dropout goes after
the activation that follows each hidden ``Linear``).
"""

from __future__ import annotations

from torch import nn

from hpplug.errors import HpplugError


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Sequential:
    """The article's MLP: flatten, Linear(in, hidden), ReLU, Linear(hidden, classes)."""
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * height * width, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def cnn(input_shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Sequential:
    """Two 3x3 conv blocks with 2x2 pooling, then one hidden layer."""
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (height // 4) * (width // 4), hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


MODELS = {"mlp": mlp, "cnn": cnn}


def build(name: str, input_shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Sequential:
    if name not in MODELS:
        raise HpplugError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if name == "cnn" and min(input_shape[1:]) < 4:
        raise HpplugError(f"the cnn needs images of at least 4x4 pixels, got {input_shape}")
    return MODELS[name](input_shape, num_classes, hidden)
