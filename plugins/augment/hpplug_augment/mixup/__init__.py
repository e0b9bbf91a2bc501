"""``mixup``: train on convex combinations of pairs of samples and of their labels.

Zhang et al. 2018: ``x = lam * x + (1 - lam) * x[perm]`` and the same mix of the one-hot
targets, ``lam ~ Beta(alpha, alpha)`` once per batch, ``perm`` a random pairing of the batch.
The network is asked to behave linearly between training samples, which regularizes it and
calibrates its confidence. The targets become class probabilities (``batch.y`` ``[n, C]``):
the default loss and ``label-smoothing`` take them, and training accuracy is counted
against each mix's dominant label.
"""

from __future__ import annotations

import torch

from hpplug import Batch, Param

from hpplug_augment._mixing import PROB, Mixing, mix_targets


def mix_inputs(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]``, in ``x``'s dtype."""
    lam = lam.to(x.dtype)
    return lam * x + (1 - lam) * x[perm]


class Mixup(Mixing):
    """Mix each training batch with a permutation of itself, inputs and targets alike."""

    params = {
        "alpha": Param(float, 0.2, "Beta(alpha, alpha) of the mixing weight; 0 turns mixup off", min=0.0),
        "prob": PROB,
    }

    def mix(self, batch: Batch, lam: torch.Tensor, perm: torch.Tensor) -> None:
        batch.x = mix_inputs(batch.x, perm, lam)
        mix_targets(batch, perm, lam)
