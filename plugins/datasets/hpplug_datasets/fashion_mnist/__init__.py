"""``fashion-mnist``: Zalando's clothing images in MNIST's file format."""

from __future__ import annotations

from pathlib import Path

from hpplug import Dataset, Splits
from hpplug_datasets.mnist import load_idx_splits


class FashionMNIST(Dataset):
    """Fashion-MNIST: 60,000 + 10,000 28x28 clothing images, 10 classes (torchvision's files)."""

    def load(self, root: Path, download: bool) -> Splits:
        return load_idx_splits("fashion-mnist", "FashionMNIST", root, download)
