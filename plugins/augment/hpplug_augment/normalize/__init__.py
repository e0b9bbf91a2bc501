"""``normalize``: ``(x - mean) / std`` per channel, torchvision ``Normalize(mean, std)`` per batch.

Centred, unit-scale inputs keep the first layer's pre-activations in a good range, which
makes training faster and less sensitive to the LR. It applies in training and evaluation
alike (the model must see the same input distribution), and runs last (``trylast``) so
crop padding and flips act on raw [0, 1] pixels, as in the article's ``Compose``.
"""

from __future__ import annotations

from typing import Any

import torch

from hpplug import Batch, HpplugError, Param, Plugin, Progress, hookimpl


class Normalize(Plugin):
    """Subtract ``mean`` and divide by ``std`` per channel, in training and evaluation."""

    kind = "augmentation"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    params = {
        "mean": Param(
            tuple, (0.5,), "per-channel mean to subtract: one value or one per channel, e.g. 0.5 or 0.49,0.48,0.45"
        ),
        "std": Param(tuple, (0.5,), "per-channel std to divide by (> 0): one value or one per channel"),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if not self.mean or not self.std:
            raise HpplugError("--normalize.mean and --normalize.std need at least one value")
        if any(s <= 0 for s in self.std):
            raise HpplugError(f"--normalize.std must be > 0 for every channel, got {self.std}")
        self._cache: dict[tuple[torch.device, torch.dtype, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def stats(self, channels: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean``, ``std`` shaped ``[1, C, 1, 1]``, built once per device, dtype and C."""
        key = (device, dtype, channels)
        if key not in self._cache:
            for name, values in (("mean", self.mean), ("std", self.std)):
                if len(values) not in (1, channels):
                    raise HpplugError(
                        f"--normalize.{name} has {len(values)} values but the images have "
                        f"{channels} channels: give 1 or {channels}"
                    )
            self._cache[key] = tuple(  # type: ignore[assignment]
                torch.tensor(v, device=device, dtype=dtype).view(1, -1, 1, 1) for v in (self.mean, self.std)
            )
        return self._cache[key]

    @hookimpl(trylast=True)
    def hpplug_transform_batch(self, batch: Batch, progress: Progress) -> None:
        mean, std = self.stats(batch.x.shape[1], batch.x.device, batch.x.dtype)
        batch.x = (batch.x - mean) / std
