"""``cutmix``: paste a box cut from another sample, and mix the labels by its area.

Yun et al. 2019: ``lam ~ Beta(alpha, alpha)`` once per batch, a box of ``sqrt(1 - lam)`` of
the image's height and width centred on a random pixel, clipped at the borders, pasted into
every image from its partner in a random pairing of the batch. The targets are mixed by the
share of the image each sample really shows after clipping, so they say what the network sees.
Unlike mixup the images stay natural-looking, and the network must use the whole object.
"""

from __future__ import annotations

import torch

from hpplug import Batch, Param

from hpplug_augment._mixing import PROB, Mixing, box_mask, image_size, mix_targets, per_sample
from hpplug_augment._random import randint


def draw_box(lam: torch.Tensor, height: int, width: int, generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    """The pasted box's ``[1, height, width]`` mask for mixing weight ``lam``: Yun et al.'s
    (and torchvision's ``CutMix``) box, ``2 * floor(side * sqrt(1 - lam) / 2)`` pixels on each
    side around a uniformly drawn centre, clipped to the image."""
    cut = torch.sqrt(1 - lam)
    half_h = torch.div(torch.floor(height * cut), 2, rounding_mode="floor").view(1)
    half_w = torch.div(torch.floor(width * cut), 2, rounding_mode="floor").view(1)
    cy = randint(height, 1, generator, device)
    cx = randint(width, 1, generator, device)
    return box_mask(cy - half_h, cy + half_h, cx - half_w, cx + half_w, height, width)


class CutMix(Mixing):
    """Paste a random box from a permutation of each training batch; mix targets by area."""

    params = {
        "alpha": Param(float, 1.0, "Beta(alpha, alpha) of the kept area before clipping; 0 turns cutmix off",
                       min=0.0),
        "prob": PROB,
    }

    def mix(self, batch: Batch, lam: torch.Tensor, perm: torch.Tensor) -> None:
        x = batch.x
        height, width = image_size(x, "--plugin cutmix")
        box = draw_box(lam, height, width, batch.generator, x.device)
        batch.x = torch.where(per_sample(box, x), x[perm], x)
        mix_targets(batch, perm, 1 - box.float().mean())  # the share each image keeps
