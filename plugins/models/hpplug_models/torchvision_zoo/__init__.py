"""``torchvision``: any classification model of ``torchvision.models``, by name.

``--model torchvision/resnet18`` builds ``torchvision.models.get_model("resnet18")`` for the
run's classes, randomly initialized or from torchvision's pretrained weights, fitted to the
data's channel count. Weights come through torchvision's own download path into torch's
cache (``torch.hub.get_dir()``); each file is read as plain tensors first, so a damaged or
tampered cache file is a one-line error and never runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from hpplug import HpplugError, Model, Param
from hpplug_models._adapt import (OFFLINE_ENV, adapt_first_conv, image_shape, offline, one_line, probe,
                                  replace_head, unknown_arch)


class Torchvision(Model):
    """A torchvision classification architecture, random or pretrained."""

    packable = True  # built per trial and stacked; what a pack cannot vectorize trains alone

    variant = "arch"
    params = {
        "arch": Param(str, "resnet18", "torchvision.models name: resnet18, efficientnet_b0, convnext_tiny, ..."),
        "weights": Param(str, "", "pretrained weights: DEFAULT or a name such as IMAGENET1K_V1; "
                                  "empty for random initialization"),
    }

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        label = f"torchvision/{self.arch}"
        channels = image_shape(input_shape, label)[0]
        from torchvision import models  # the zoo takes a second to import: only when used

        names = models.list_models(module=models)
        if self.arch not in names:
            raise unknown_arch("torchvision", self.arch, names, "torchvision.models.list_models()")
        weights = _weights(models, self.arch, self.weights, label) if self.weights else None
        kwargs: dict[str, Any] = {"weights": weights} if weights else {"weights": None, "num_classes": num_classes}
        if weights:
            _fetch(weights, label)
        model = models.get_model(self.arch, **kwargs)
        if getattr(model, "aux_logits", False):  # inception_v3, googlenet: a tuple of outputs in training
            model = models.get_model(self.arch, aux_logits=False, **kwargs)
        if weights and len(weights.meta["categories"]) != num_classes:
            replace_head(model, len(weights.meta["categories"]), num_classes, label)
        if channels != 3:
            adapt_first_conv(model, channels, pretrained=weights is not None, label=label)
        probe(model, input_shape, num_classes, label)
        return model


def _weights(models: Any, arch: str, name: str, label: str) -> Any:
    """The weights enum member for ``DEFAULT``, ``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1``."""
    enum = models.get_model_weights(arch)
    try:
        return enum[name.strip().rpartition(".")[2].upper()]
    except KeyError:
        available = ", ".join(w.name for w in enum)
        raise HpplugError(f"{label} has no weights {name!r}: use DEFAULT or one of {available}, "
                          "or leave --torchvision.weights empty for random initialization") from None


def cache_path(weights: Any) -> Path:
    """Where torch's download path keeps the file of ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _fetch(weights: Any, label: str) -> None:
    """Download ``weights`` into torch's cache if missing, and read them as plain tensors.

    torchvision then loads the checked file from the cache (it reads it with full pickle,
    which is why it is read safely here first).
    """
    path = cache_path(weights)
    cached = path.is_file()
    if not cached and offline():
        raise HpplugError(f"{label}: the weights {weights} are not in torch's cache and {OFFLINE_ENV} is set: "
                          f"download {weights.url} to {path}")
    try:
        weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - network, disk and format failures alike, in one line
        if cached:
            raise HpplugError(f"{label}: the cached weights file {path} cannot be read as plain weights "
                              f"({one_line(exc)}): delete it to download it again") from None
        raise HpplugError(f"{label}: could not download the weights {weights} ({one_line(exc)}): "
                          f"download {weights.url} to {path}, or check the network") from None
