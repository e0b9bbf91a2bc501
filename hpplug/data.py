"""Datasets as tensors: read once (torchvision or scikit-learn), then batched by indexing.

Holding a dataset as one uint8 tensor on the device and slicing batches out of it is what
makes a small model fast here: the article's DataLoader with PIL transforms spends most
of its time in the data pipeline, not the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hpplug.errors import HpplugError

OFFLINE_ENV = "HPPLUG_OFFLINE"

# What torchvision looks for, so a missing-data error can say where to put which files.
_EXPECTED_FILES = {
    "mnist": ("MNIST/raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
              "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (uncompressed)"),
    "fashion-mnist": ("FashionMNIST/raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                      "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (uncompressed)"),
    "cifar10": (".", "cifar-10-python.tar.gz"),
}


@dataclass
class TensorDataset:
    """Images as uint8 ``[N, C, H, W]`` with int64 labels; ``scale`` maps pixels to [0, 1]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    scale: float

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.train_x, self.train_y, self.test_x, self.test_y))

    def to(self, device: torch.device) -> TensorDataset:
        move = lambda t: t.to(device)  # noqa: E731
        return TensorDataset(move(self.train_x), move(self.train_y), move(self.test_x),
                             move(self.test_y), self.num_classes, self.scale)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> float in [0, 1], exactly as torchvision's ToTensor does."""
        return x.float().div_(self.scale)


def digits() -> TensorDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images): needs no network.

    A fixed shuffle (seed 0) splits off the last 20% as the test set.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.uint8).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    cut = int(len(y) * 0.8)
    return TensorDataset(x[:cut], y[:cut], x[cut:], y[cut:], num_classes=10, scale=16.0)


def _torchvision(name: str, root: Path, download: bool) -> TensorDataset:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST,
           "cifar10": datasets.CIFAR10}[name]
    try:
        splits = [cls(str(root), train=train, download=download) for train in (True, False)]
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError, URLError, OSError...
        folder, files = _EXPECTED_FILES[name]
        why = "downloading failed" if download else "downloads are off"
        raise HpplugError(
            f"{name} is not in {root / folder} and {why} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); put {files} in "
            f"{root / folder}, or run once with network access"
        ) from None
    tensors = []
    for split in splits:
        x = torch.as_tensor(split.data)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        tensors += [x.contiguous(), torch.as_tensor(split.targets, dtype=torch.int64)]
    return TensorDataset(*tensors, num_classes=len(splits[0].classes), scale=255.0)


DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
# What each holds, known before it is read (a run's memory is checked before anything is
# written): image shape, classes, training and test samples.
SIZES = {"digits": ((1, 8, 8), 10, 1437, 360), "mnist": ((1, 28, 28), 10, 60_000, 10_000),
         "fashion-mnist": ((1, 28, 28), 10, 60_000, 10_000), "cifar10": ((3, 32, 32), 10, 50_000, 10_000)}


def load(name: str, root: str | Path, download: bool = True) -> TensorDataset:
    """Read a dataset by name; ``HPPLUG_OFFLINE=1`` turns downloads off."""
    if name == "digits":
        return digits()
    if name not in DATASETS:
        raise HpplugError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        download = False
    return _torchvision(name, Path(root), download)


def placement(data: TensorDataset, device: torch.device) -> torch.device:
    """Where to hold the data: on the device when it fits in half its free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return device if data.nbytes < free // 2 else torch.device("cpu")
    return device
