"""``cifar10``: 60,000 32x32 colour images in 10 classes, from the python-format batches.

torchvision fetches and unpacks the archive (checksum checked); the batches themselves are
read by :mod:`hpplug_datasets.cifar10.batches`, which refuses a pickle that would run code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hpplug import Dataset, Splits, TensorSplit
from hpplug_datasets._common import detail, downloads_on, not_there
from hpplug_datasets.cifar10.batches import ARCHIVE, read_batch, read_classes

FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
META = "batches.meta"


def _fetch(root: Path, download: bool, missing: list[str]) -> None:
    """Unpack the archive if a genuine one is in ``root``, else download it (if allowed)."""
    from torchvision.datasets import CIFAR10 as Source
    from torchvision.datasets.utils import check_integrity, extract_archive

    folder, wanted = root / FOLDER, f"{ARCHIVE} (or the {FOLDER} folder unpacked from it)"
    archive = root / ARCHIVE
    if check_integrity(str(archive), Source.tgz_md5):  # the real archive: safe to unpack offline too
        extract_archive(str(archive), str(root))
        return
    if not downloads_on(download):
        raise not_there("cifar10", folder, "missing: " + ", ".join(missing), wanted, root, downloading=False)
    try:  # torchvision's own download: checksum checked before it is unpacked
        fetcher = Source.__new__(Source)
        fetcher.root = str(root)
        fetcher.download()
    except Exception as exc:  # noqa: BLE001 - URLError, RuntimeError, OSError...
        raise not_there("cifar10", folder, detail(exc), wanted, root, downloading=True) from None


class CIFAR10(Dataset):
    """CIFAR-10: 50,000 + 10,000 32x32 RGB images of 10 object classes."""

    def load(self, root: Path, download: bool) -> Splits:
        root = Path(root)
        folder = root / FOLDER
        missing = [name for name in TRAIN + TEST + [META] if not (folder / name).is_file()]
        if missing:
            _fetch(root, download, missing)
        classes = read_classes(folder / META)
        splits = []
        for files in (TRAIN, TEST):
            batches = [read_batch(folder / name, len(classes)) for name in files]
            x = torch.from_numpy(np.concatenate([b[0] for b in batches]))
            y = torch.from_numpy(np.concatenate([b[1] for b in batches]))
            splits.append(TensorSplit(x, y, scale=255.0))
        return Splits(train=splits[0], test=splits[1], classes=classes)
