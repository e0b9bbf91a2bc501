"""Each member's dropout masks in a pack, drawn as its run draws them alone.

Alone, ``F.dropout`` draws a layer's mask from torch's global generator (``bernoulli_(1 - p)``
then ``div_(1 - p)``; on a GPU its fused ``native_dropout`` kernel; channel dropout,
``F.dropout2d`` and its kin, ``bernoulli_`` everywhere, one value per channel of a sample).
In a pack the vectorized forward may draw nothing (``vmap``'s ``randomness="error"``), so the pack's copy of the model takes each dropout layer's masks as
an input (:class:`MaskedDropout`), and :class:`Dropouts` draws them before the forward, for
every member from its own generator (:mod:`hpplug.pack.rng`), layer by layer in the order
the forward calls them: the same numbers as alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hpplug.pack.rng import device_state, set_device_state
from hpplug.pack.support import PackRefused

# Channel dropout: one draw per channel of a sample, whose input is [N, C] + this many dims.
CHANNEL = {nn.Dropout1d: 1, nn.Dropout2d: 2, nn.Dropout3d: 3}
# The dropout a pack draws for each member as alone (these classes exactly: a subclass may draw otherwise).
MASKED = (nn.Dropout, *CHANNEL)
# Devices where F.dropout (not channel dropout) runs the fused native_dropout kernel (ATen's
# is_fused_kernel_acceptable): its masks are drawn by that kernel here too (fused_mask).
FUSED = ("cuda",)


class MaskedDropout(nn.Module):
    """A dropout layer (:data:`MASKED`) whose mask (already divided by ``1 - p``; one value
    per channel for channel dropout) arrives as a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.empty(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask if self.training else x


def masked(module: nn.Module) -> nn.Module:
    """``module`` with its dropout layers replaced by :class:`MaskedDropout` (in place)."""
    for name, layer in list(module.named_modules()):
        if type(layer) in MASKED:
            parent, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, child, MaskedDropout())
    return module


@dataclass(frozen=True)
class Site:
    """A dropout layer as the forward meets it: its name and one sample's mask shape (its
    input's, or ``[C, 1, ...]`` for channel dropout)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


class Dropouts:
    """The dropout layers of the members' modules, and their masks for one micro-batch."""

    def __init__(self, base: nn.Module, autocast: Callable[[], Any]) -> None:
        self.names = [name for name, layer in base.named_modules() if isinstance(layer, MaskedDropout)]
        self.autocast = autocast
        self.modules: list[nn.Module] = []
        self.layers: dict[str, list[nn.Module]] = {}
        self._sites: dict[tuple[int, ...], list[Site]] = {}

    def link(self, modules: Sequence[nn.Module]) -> None:
        """The members whose layers' ``p`` the masks follow, in stack order."""
        self.modules = list(modules)
        self.layers = {name: [m.get_submodule(name) for m in modules] for name in self.names}

    def sites(self, sample: tuple[int, ...], device: torch.device) -> list[Site]:
        """The dropout layers in the order the forward calls them, with their masks' shape,
        found once per input shape by a forward of the first member's module (in eval
        mode, under no_grad: it draws nothing)."""
        if sample not in self._sites:
            module, found = self.modules[0], []

            def note(layer: nn.Module, args: tuple[Any, ...], name: str) -> None:
                shape, dims = tuple(args[0].shape[1:]), CHANNEL.get(type(layer))
                if dims is not None:  # as F.dropout2d draws: [N, C, 1, 1] for an input [N, C, H, W]
                    if len(shape) != dims + 1:
                        raise PackRefused(f"layer {name} ({type(layer).__name__}) gets inputs of {len(shape) + 1} "
                                          f"dimensions; a pack draws its masks for [N, C] and {dims} more")
                    shape = (shape[0],) + (1,) * dims
                found.append(Site(name, shape, args[0].dtype))

            hooks = [layer.register_forward_pre_hook(lambda layer, args, name=name: note(layer, args, name))
                     for name, layer in module.named_modules() if type(layer) in MASKED]
            mode = module.training
            try:
                module.eval()
                with torch.no_grad(), self.autocast():
                    module(torch.zeros((1, *sample), device=device))
            finally:
                module.train(mode)
                for hook in hooks:
                    hook.remove()
            names = [site.name for site in found]
            if len(set(names)) != len(names) or set(names) != set(self.names):
                raise PackRefused("a dropout layer of the model is called more than once, or not at all, in one "
                                  "forward; a pack draws one mask per layer and forward")
            self._sites[sample] = found
        return self._sites[sample]

    def masks(self, generators: Sequence[torch.Generator], x: torch.Tensor, shared: bool) -> dict[str, torch.Tensor]:
        """Every member's dropout masks for one micro-batch, ``{"<layer>.mask": [K, n, ...]}``."""
        sample = tuple(x.shape[1:] if shared else x.shape[2:])
        n = x.shape[0] if shared else x.shape[1]
        out = {}
        for site in self.sites(sample, x.device):
            masks = torch.empty((len(generators), n, *site.shape), dtype=site.dtype, device=x.device)
            for k, (generator, layer) in enumerate(zip(generators, self.layers[site.name])):
                p = layer.p  # read at every draw: a plugin may schedule it
                if p == 0:
                    masks[k].fill_(1)  # F.dropout draws nothing at p = 0, and zeroes everything at 1
                elif p == 1:
                    masks[k].zero_()
                elif x.device.type in FUSED and type(layer) is nn.Dropout:
                    masks[k] = fused_mask(generator, masks[k].shape, p, site.dtype, x.device)
                else:
                    masks[k].bernoulli_(1 - p, generator=generator).div_(1 - p)
            out[f"{site.name}.mask"] = masks
        return out


def fused_mask(generator: torch.Generator, shape: Sequence[int], p: float, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """A mask (divided by ``1 - p``) as ``F.dropout`` draws it where it runs the fused
    ``native_dropout`` kernel (:data:`FUSED` devices), whose numbers differ from
    ``bernoulli_``'s: from torch's global generator, so the member's state is put there for
    the draw and taken back after it."""
    outside = device_state(device)
    set_device_state(device, generator.get_state())
    try:
        return torch.native_dropout(torch.ones(tuple(shape), dtype=dtype, device=device), p, True)[0]
    finally:
        generator.set_state(device_state(device))
        set_device_state(device, outside)
