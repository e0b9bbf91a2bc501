"""What mixup, cutmix and cutout share: the mixing weight, the mixed targets, image boxes."""

from __future__ import annotations

import torch

from hpplug import Batch, HpplugError, Param, Plugin, Progress, hookimpl

from hpplug_augment._random import beta, permutation, rand

PROB = Param(float, 1.0, "probability that a batch is mixed", min=0.0, max=1.0)


def draw_lam(alpha: float, prob: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """The batch's mixing weight, a 0-d tensor on ``device``: Beta(``alpha``, ``alpha``), or
    1 (no mixing) with probability ``1 - prob``. Stays on the device: no host sync."""
    lam = beta(alpha, 1, generator, device)[0]
    if prob < 1:
        lam = torch.where(rand(1, generator, device)[0] < prob, lam, torch.ones_like(lam))
    return lam


def mix_targets(batch: Batch, perm: torch.Tensor, lam: torch.Tensor) -> None:
    """``batch.y = lam * soft + (1 - lam) * soft[perm]``: class probabilities that still sum
    to one, whether ``y`` held class indices or probabilities already mixed by another plugin."""
    soft = batch.soft_targets()
    lam = lam.to(soft.device, soft.dtype)
    batch.y = lam * soft + (1 - lam) * soft[perm.to(soft.device)]


class Mixing(Plugin):
    """A method that mixes each training batch with a random pairing of itself, by a weight
    ``lam ~ Beta(alpha, alpha)``: subclasses declare ``alpha`` and ``prob`` and say how in
    :meth:`mix`."""

    kind = "augmentation"
    packable = True  # draws from batch.generator only: it trains in a pack (hpplug.pack)

    def mix(self, batch: Batch, lam: torch.Tensor, perm: torch.Tensor) -> None:
        """Replace ``batch.x`` and ``batch.y`` by their mix with ``batch.x[perm]``, ``batch.y[perm]``."""
        raise NotImplementedError

    @hookimpl
    def hpplug_transform_batch(self, batch: Batch, progress: Progress) -> None:
        if not batch.train or self.alpha == 0 or self.prob == 0:
            return
        lam = draw_lam(self.alpha, self.prob, batch.generator, batch.x.device)
        self.mix(batch, lam, permutation(len(batch.x), batch.generator, batch.x.device))


def image_size(x: torch.Tensor, option: str) -> tuple[int, int]:
    """``(H, W)`` of a batch of images ``[N, ..., H, W]``; a one-line error for other inputs."""
    if x.ndim < 3:
        raise HpplugError(f"{option} needs a batch of images [N, C, H, W], but the inputs are "
                          f"{list(x.shape)}: use it with an image data set")
    return x.shape[-2], x.shape[-1]


def box_mask(top: torch.Tensor, bottom: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
             height: int, width: int) -> torch.Tensor:
    """``[n, height, width]`` bool masks of the boxes ``[top, bottom) x [left, right)``, one per
    row of the ``[n]`` tensors, clipped to the image: parts outside it simply select no pixel."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def per_sample(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mask`` ``[n or 1, H, W]`` viewed to broadcast over ``x`` ``[N, ..., H, W]``."""
    return mask.view(mask.shape[0], *([1] * (x.ndim - 3)), *mask.shape[1:])
