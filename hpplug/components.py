"""What a model or data-set plugin implements: :class:`Model`, :class:`Dataset`, :class:`Splits`.

Models and data sets are plugins like any other: a ``Plugin`` subclass named by an entry
point in the ``hpplug`` group, with ``params`` that become ``--<name>.<param>`` options and
sweep parameters. A run picks exactly one of each with ``--model NAME`` and
``--dataset NAME``; hpplug builds it with the validated values and registers it with the
run's other plugins, so a model or data set may also implement hooks (a data set can
normalize its own batches in ``hpplug_transform_batch``).

A model plugin that serves a family of architectures names the parameter that picks one
in ``variant``: ``--model timm/resnet18`` is ``--model timm --timm.<variant>=resnet18``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from hpplug.plugin import Plugin


class TensorSplit(TorchDataset):
    """A whole split held as tensors: the fast path (batched by indexing, no DataLoader).

    ``x`` is ``[N, ...]`` (uint8 pixels or floats), ``y`` is ``[N]`` int64 labels; an
    input is ``x[i].float() / scale`` (255 for 8-bit images, 1 for features).
    It is also an ordinary map-style data set, so any code that takes one takes this.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y, self.scale = x, y.long(), float(scale)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i].float() / self.scale, int(self.y[i])


@dataclass
class Splits:
    """What a data set provides: map-style data sets of ``(input, label)`` items.

    ``train`` is required. ``val`` is the data set's own validation split; without one,
    hpplug holds out ``--val-fraction`` of ``train`` (fixed and seeded). ``test`` is
    evaluated once, at the end. ``classes``: class names or their number; without it,
    hpplug counts the labels. An input is a tensor of any shape or a PIL image; a label
    is an int.
    """

    train: TorchDataset
    test: TorchDataset | None = None
    val: TorchDataset | None = None
    classes: Sequence[str] | int | None = None


class Dataset(Plugin):
    """Base class of a data-set plugin: ``load`` returns its :class:`Splits`."""

    kind: ClassVar[str] = "dataset"

    def load(self, root: Path, download: bool) -> Splits:
        """Read the data set from ``root`` (``--data-root``); fetch it there first if
        ``download`` is true and it is missing. Raise ``HpplugError`` with one line that
        says which files to put where when it cannot be had."""
        raise NotImplementedError


class Model(Plugin):
    """Base class of a model plugin: ``build`` returns a freshly initialized ``nn.Module``.

    The module maps a batch of inputs ``[batch, *input_shape]`` (floats) to logits
    ``[batch, num_classes]``.
    """

    kind: ClassVar[str] = "model"
    variant: ClassVar[str | None] = None

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        raise NotImplementedError


def describe(obj: Any) -> str:
    """A short name for an object in error messages."""
    return getattr(obj, "__qualname__", None) or type(obj).__name__
