"""``flip``: random horizontal flip per sample, torchvision ``RandomHorizontalFlip(p)`` per batch.

A mirrored photo of a cat is still a cat, so flipping doubles the data for free on natural
images. It is in the seed article's MNIST recipe too, where it is a poor fit: a mirrored
2, 3, 7 or 9 is not a digit. Keep it a plugin so a sweep can show that.
"""

from __future__ import annotations

import torch

from hpplug import Batch, Param, Plugin, Progress, hookimpl

from hpplug_augment._random import rand


def draw_flips(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A bool mask ``[n]``: which samples to flip, each with probability ``p``."""
    return rand(n, generator, device) < p


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` [N, C, H, W] with the samples in ``mask`` mirrored left-right."""
    return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


class Flip(Plugin):
    """Mirror each training sample left-right with probability ``p``."""

    kind = "augmentation"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    params = {
        "p": Param(float, 0.5, "probability of flipping each training sample", min=0.0, max=1.0),
    }

    @hookimpl
    def hpplug_transform_batch(self, batch: Batch, progress: Progress) -> None:
        if not batch.train or self.p == 0:
            return
        mask = draw_flips(batch.x.shape[0], self.p, batch.generator, batch.x.device)
        batch.x = flip_where(batch.x, mask)
