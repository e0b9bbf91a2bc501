"""``timm``: any model of PyTorch Image Models (timm), by name.

``--model timm/resnet18`` is ``timm.create_model("resnet18", num_classes=N, in_chans=C)``:
timm fits the stem to the data's channels and the classifier to its classes itself, also
for pretrained weights (which it reads as tensors or safetensors only). timm is optional
(``pip install 'hpplug-models[timm]'``) and imported only when a run builds this model.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import torch
from torch import nn

from hpplug import HpplugError, Model, Param
from hpplug_models._adapt import OFFLINE_ENV, image_shape, offline, one_line, probe, unknown_arch


class Timm(Model):
    """A timm architecture, random or pretrained."""

    packable = True  # built per trial and stacked; what a pack cannot vectorize trains alone

    variant = "arch"
    params = {
        "arch": Param(str, "resnet18", "timm model name (timm.list_models()), optionally with a weights tag: "
                                       "resnet18.a1_in1k"),
        "pretrained": Param(bool, False, "start from timm's pretrained weights (downloaded once into the "
                                         "Hugging Face cache)"),
    }

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        label = f"timm/{self.arch}"
        channels = image_shape(input_shape, label)[0]
        try:
            import timm  # optional, and slow to import: only when used
        except ImportError:
            raise HpplugError(f"{label} needs the timm package: pip install timm "
                              "(or pip install 'hpplug-models[timm]')") from None
        if not timm.is_model(self.arch):
            raise unknown_arch("timm", self.arch, timm.list_models(), "timm.list_models()")
        hub_only = offline() and self.pretrained
        try:
            if hub_only:
                _require_cached_url(self.arch, label)
            with _hub_offline(hub_only):
                model = timm.create_model(self.arch, pretrained=self.pretrained, num_classes=num_classes,
                                          in_chans=channels)
        except HpplugError:
            raise
        except Exception as exc:  # noqa: BLE001 - timm's and the hub's failures alike, in one line
            raise HpplugError(_failure(label, self.pretrained, exc)) from None
        probe(model, input_shape, num_classes, label)
        return model


def _failure(label: str, pretrained: bool, exc: Exception) -> str:
    if not pretrained:
        return f"timm could not build {label} ({one_line(exc)})"
    from huggingface_hub import constants

    where = f"the Hugging Face cache {constants.HF_HUB_CACHE} or torch's {torch.hub.get_dir()}"
    if offline():
        return (f"{label}: timm's pretrained weights are not in {where} and {OFFLINE_ENV} is set "
                f"({one_line(exc)}): run once with network access, or set --timm.pretrained false")
    return (f"{label}: could not load timm's pretrained weights ({one_line(exc)}): check the network, "
            f"or set --timm.pretrained false; downloads go to {where}")


def _require_cached_url(arch: str, label: str) -> None:
    """Offline, weights that timm would fetch by URL (not from the Hugging Face hub) must be
    in torch's cache already: torch's download path has no offline switch of its own."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None or cfg.hf_hub_id or not cfg.url:
        return
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
    if not path.is_file():
        raise HpplugError(f"{label}: the pretrained weights are not in torch's cache and {OFFLINE_ENV} is set: "
                          f"download {cfg.url} to {path}")


@contextmanager
def _hub_offline(on: bool) -> Iterator[None]:
    """Hugging Face's offline mode for one call: ``huggingface_hub`` reads ``HF_HUB_OFFLINE``
    once, at import, so the switch is set on its constants and restored afterwards."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
