"""``label-smoothing``: cross-entropy against softened targets.

The target puts ``1 - smoothing`` on the true class and spreads ``smoothing`` uniformly over
all classes, so the network is not pushed to ever larger logits: it is less over-confident
and often better calibrated (Szegedy et al. 2016).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hpplug import Param, Plugin, hookimpl


class LabelSmoothing(Plugin):
    """Per-sample cross-entropy with ``label_smoothing`` (the training loss)."""

    kind = "regularizer"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    slot = "loss"
    params = {
        "smoothing": Param(float, 0.1, "probability mass spread uniformly over all classes", min=0.0, max=0.99),
    }

    @hookimpl
    def hpplug_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.smoothing, reduction="none")
