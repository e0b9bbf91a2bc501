"""``cutout``: erase a random square of every training image.

DeVries & Taylor 2017: a square of fixed side, centred on a uniformly drawn pixel of each
sample and clipped at the borders, set to zero, so the network cannot rely on any one part
of the object. Centres are drawn for the whole batch at once and the squares are one
broadcast comparison: no Python loop over samples.
"""

from __future__ import annotations

import torch

from hpplug import Batch, Param, Plugin, Progress, hookimpl

from hpplug_augment._mixing import box_mask, image_size, per_sample
from hpplug_augment._random import randint


def square_side(size: float, height: int, width: int) -> int:
    """The square's side in pixels: ``size`` of the image's shorter side, rounded."""
    return round(size * min(height, width))


def draw_squares(n: int, side: int, height: int, width: int, generator: torch.Generator | None,
                 device: torch.device) -> torch.Tensor:
    """``[n, height, width]`` masks of one ``side x side`` square per sample, its top-left
    corner ``side // 2`` pixels above and left of a uniformly drawn centre, clipped."""
    top = randint(height, n, generator, device) - side // 2
    left = randint(width, n, generator, device) - side // 2
    return box_mask(top, top + side, left, left + side, height, width)


class Cutout(Plugin):
    """Zero a random square, clipped at the borders, in each training image."""

    kind = "augmentation"
    packable = True  # draws from batch.generator only: it trains in a pack (hpplug.pack)
    params = {
        "size": Param(float, 0.5, "side of the erased square, as a fraction of the image's shorter side",
                      min=0.0, max=1.0),
    }

    @hookimpl
    def hpplug_transform_batch(self, batch: Batch, progress: Progress) -> None:
        if not batch.train:
            return
        x = batch.x
        height, width = image_size(x, "--plugin cutout")
        side = square_side(self.size, height, width)
        if side == 0:
            return
        squares = draw_squares(len(x), side, height, width, batch.generator, x.device)
        batch.x = x.masked_fill(per_sample(squares, x), 0)
