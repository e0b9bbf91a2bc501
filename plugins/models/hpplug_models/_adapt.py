"""What the zoo plugins share: fitting an ImageNet model to the run's data, and checking it.

torchvision and timm models are made for 3-channel ImageNet images and 1000 classes. These
helpers swap the first convolution for the data's channel count and the classifier for its
class count, found by layer type rather than per architecture, and then run one input
through the result, so that a model that cannot take the data fails at build time with one
line instead of with a traceback in the first training batch.
"""

from __future__ import annotations

import difflib
import math
import os
from typing import Iterable

import torch
from torch import nn

from hpplug import HpplugError

OFFLINE_ENV = "HPPLUG_OFFLINE"


def offline() -> bool:
    """``HPPLUG_OFFLINE`` set (to anything but ``0``): never download, use cached files only."""
    return os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")


def one_line(exc: BaseException) -> str:
    """An exception as one short line, with its type."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def image_shape(input_shape: tuple[int, ...], label: str) -> tuple[int, int, int]:
    """``(channels, height, width)``, or a one-line error for inputs that are not images."""
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise HpplugError(f"{label} needs images of shape (channels, height, width), got input shape "
                          f"{tuple(input_shape)}: use --model mlp for other inputs")
    channels, height, width = (int(d) for d in input_shape)
    return channels, height, width


def unknown_arch(family: str, arch: str, names: Iterable[str], listing: str) -> HpplugError:
    """The error for a name the zoo does not have, with the closest names it does have."""
    close = difflib.get_close_matches(arch, list(names), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"see {listing}"
    return HpplugError(f"{family} has no classification model {arch!r}: {hint}")


def adapt_first_conv(model: nn.Module, channels: int, pretrained: bool, label: str) -> None:
    """Replace the first ``nn.Conv2d`` (if it takes 3 channels) by one that takes ``channels``.

    Pretrained filters are kept as timm adapts them: summed over RGB for one channel (a gray
    image then gives what the same RGB-gray image gave), tiled and scaled by 3/C otherwise.
    Random filters are redrawn with the architecture's own scale, adjusted for fan-in.
    """
    found = next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise HpplugError(f"{label} has no nn.Conv2d to take {channels}-channel images: use 3-channel data")
    name, conv = found
    if conv.in_channels != 3:
        return  # not an RGB stem: the probe says whether the data fits
    if conv.groups != 1:
        raise HpplugError(f"{label}'s first convolution is grouped ({conv.groups} groups), so it cannot be "
                          f"changed to take {channels} channels: use 3-channel data")
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        weight = conv.weight
        if pretrained and channels == 1:
            new.weight.copy_(weight.sum(dim=1, keepdim=True))
        elif pretrained:
            new.weight.copy_(weight.repeat(1, math.ceil(channels / 3), 1, 1)[:, :channels] * (3 / channels))
        else:
            new.weight.normal_(0.0, float(weight.std()) * math.sqrt(3 / channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    model.set_submodule(name, new)


def replace_head(model: nn.Module, classes: int, num_classes: int, label: str) -> None:
    """Swap the last ``nn.Linear`` (the pretrained classifier, ``classes`` outputs) for a
    freshly initialized one with ``num_classes`` outputs."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1][1].out_features != classes:
        raise HpplugError(f"{label}'s pretrained classifier is not an nn.Linear with {classes} outputs, so it "
                          f"cannot be replaced for {num_classes} classes: train it from random "
                          f"initialization or on data with {classes} classes")
    name, head = linears[-1]
    model.set_submodule(name, nn.Linear(head.in_features, num_classes, bias=head.bias is not None,
                                        device=head.weight.device, dtype=head.weight.dtype))


def probe(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, label: str) -> None:
    """Run one zero input in eval mode (no statistics change) and check the logits' shape."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except Exception as exc:  # noqa: BLE001 - whatever the architecture raises, in one line
        raise HpplugError(f"{label} cannot take inputs of shape {tuple(input_shape)} ({one_line(exc)}): "
                          "choose another architecture or resize the data") from None
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise HpplugError(f"{label} returns {got} for one input, not logits of shape (1, {num_classes})")
