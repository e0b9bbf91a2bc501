"""A user's own model and data-set code, as ``--model mycode:...`` and ``--dataset mycode:...``
import it from the working folder (the tests copy this file there)."""
import math

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


def wine_like(root=None):
    """A tabular data set: 13 float features, 3 classes, linearly separable-ish."""
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 13, generator=g) * 3
    y = torch.randint(0, 3, (480,), generator=g)
    x = centers[y] + torch.randn(480, 13, generator=g)
    return TensorDataset(x[:400], y[:400]), TensorDataset(x[400:], y[400:])


def mlp(num_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 32), nn.ReLU(), nn.Linear(32, num_classes))


class Net(nn.Module):
    def __init__(self, num_classes: int, input_shape):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 24),
                                  nn.ReLU(), nn.Linear(24, num_classes))

    def forward(self, x):
        return self.body(x)


def noisy(num_classes, input_shape):
    """Alpha dropout: random numbers a pack does not draw (it trains such a model alone)."""
    return nn.Sequential(nn.AlphaDropout(0.1), nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def not_a_module(num_classes):
    return "a string"


def wrong_width(num_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], num_classes + 2))


def triples():
    items = [(torch.zeros(3), 0, "extra")] * 10
    return items, items


class Ragged(Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        return torch.zeros(3 + i % 2), i % 2


def ragged():
    return Ragged(), Ragged()


def not_datasets():
    return 5
