"""``crop``: random crop with zero padding, torchvision ``RandomCrop(size, padding)`` per batch.

Shifting each image by up to ``padding`` pixels teaches the network that a digit or object
is the same wherever it sits: the seed article's ``RandomCrop(28, padding=4)``. Offsets are
drawn per sample and the crop is one ``gather`` on the zero-padded batch: no Python loop
over samples, no PIL, no CPU round trip.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from hpplug import Batch, HpplugError, Param, Plugin, Progress, hookimpl, warn

from hpplug_augment._random import randint


def crop_size(size: int, height: int, width: int) -> tuple[int, int]:
    """``(h, w)`` of the crop: ``size x size``, or the image's own size when ``size`` is 0."""
    return (height, width) if size == 0 else (size, size)


def draw_offsets(
    n: int, max_top: int, max_left: int, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(tops, lefts)`` in ``[0, max_top]`` and ``[0, max_left]`` of the padded image."""
    tops = randint(max_top + 1, n, generator, device)
    lefts = randint(max_left + 1, n, generator, device)
    return tops, lefts


@lru_cache(maxsize=16)
def _window_index(height: int, width: int, padded_w: int, device: torch.device) -> torch.Tensor:
    """Flat positions of a ``height x width`` window at offset (0, 0): ``i * padded_w + j``, [1, 1, h*w]."""
    rows = torch.arange(height, device=device)[:, None] * padded_w
    return (rows + torch.arange(width, device=device)).reshape(1, 1, height * width)


def crop_at(
    x: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, padding: int, height: int, width: int
) -> torch.Tensor:
    """Zero-pad ``x`` [N, C, H, W] by ``padding`` and cut ``height x width`` at each sample's offset.

    One gather over the flattened padded images at ``(top + i) * W_pad + (left + j)``: the
    window's (0, 0) positions (cached) shifted by each sample's ``top * W_pad + left``.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    padded_w = w + 2 * padding
    shift = (tops * padded_w + lefts).view(n, 1, 1)
    index = _window_index(height, width, padded_w, x.device) + shift
    flat = padded.reshape(n, c, -1)
    return flat.gather(2, index.expand(n, c, height * width)).reshape(n, c, height, width)


def padding_warning(padding: int, height: int, width: int) -> str:
    """Why a padding of half the image's side or more defeats the crop, and what to use instead."""
    suggested = max(1, min(height, width) // 8)
    return (f"--crop.padding {padding} is at least half the side of the {height}x{width} images: many crops are "
            f"mostly zero padding and training can stay near chance accuracy; use about an eighth of the side "
            f"(--crop.padding {suggested})")


class Crop(Plugin):
    """Pad with zeros and crop at a random offset per sample (training only)."""

    kind = "augmentation"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    params = {
        "size": Param(int, 0, "side of the square crop in pixels; 0 = the image's own size", min=0),
        "padding": Param(int, 4, "zero border added on every side before cropping", min=0),
    }

    @hookimpl
    def hpplug_transform_batch(self, batch: Batch, progress: Progress) -> None:
        if not batch.train:
            return
        x = batch.x
        n, _, h, w = x.shape
        if 2 * self.padding >= min(h, w):
            warn(padding_warning(self.padding, h, w))
        height, width = crop_size(self.size, h, w)
        max_top, max_left = h + 2 * self.padding - height, w + 2 * self.padding - width
        if max_top < 0 or max_left < 0:
            raise HpplugError(
                f"--crop.size {self.size} is larger than the padded image "
                f"({h + 2 * self.padding}x{w + 2 * self.padding}): lower it or raise --crop.padding"
            )
        if max_top == 0 and max_left == 0 and self.padding == 0:
            return  # the only possible crop is the image itself
        tops, lefts = draw_offsets(n, max_top, max_left, batch.generator, x.device)
        batch.x = crop_at(x, tops, lefts, self.padding, height, width)
