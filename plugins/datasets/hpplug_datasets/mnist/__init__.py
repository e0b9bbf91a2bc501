"""``mnist``: handwritten digits in MNIST's IDX files, read and fetched by torchvision.

:func:`load_idx_splits` also serves ``fashion-mnist``, which has the same four files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from hpplug import Dataset, HpplugError, Splits, TensorSplit
from hpplug_datasets._common import detail, downloads_on, not_there

# split -> (images, labels): the uncompressed files torchvision reads from <root>/<Class>/raw.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_idx_splits(name: str, torchvision_class: str, root: Path, download: bool) -> Splits:
    """The train and test splits of an MNIST-format data set as uint8 ``[N, 1, H, W]`` tensors.

    ``torchvision_class`` (``MNIST``, ``FashionMNIST``) names the folder, the download
    mirrors and the class names. Only the raw IDX files are read, never torchvision's
    legacy ``processed/*.pt`` files, so nothing on disk is unpickled.
    """
    from torchvision import datasets
    from torchvision.datasets.mnist import read_image_file, read_label_file

    source = getattr(datasets, torchvision_class)
    raw = Path(root) / torchvision_class / "raw"
    names = [file for pair in FILES.values() for file in pair]
    wanted = ", ".join(names) + " (uncompressed)"
    missing = [file for file in names if not (raw / file).is_file()]
    if missing and not downloads_on(download):
        raise not_there(name, raw, "missing: " + ", ".join(missing), wanted, raw, downloading=False)
    if missing:
        try:  # torchvision's own download: every mirror, checksums checked, then un-gzipped
            fetcher = source.__new__(source)
            fetcher.root = str(root)
            fetcher.download()
        except Exception as exc:  # noqa: BLE001 - URLError, RuntimeError, OSError...
            raise not_there(name, raw, detail(exc), wanted, raw, downloading=True) from None
    classes = list(source.classes)
    splits = {}
    for split, (image_file, label_file) in FILES.items():
        x = _read(read_image_file, raw / image_file, name)
        y = _read(read_label_file, raw / label_file, name)
        if len(x) != len(y):
            raise HpplugError(f"{name}: {raw / image_file} holds {len(x)} images but {raw / label_file} "
                              f"holds {len(y)} labels: they must match one to one")
        if len(y) and y.max() >= len(classes):
            raise HpplugError(f"{name}: {raw / label_file} holds label {int(y.max())}; {name} labels are "
                              f"0..{len(classes) - 1}")
        splits[split] = TensorSplit(x.unsqueeze(1).contiguous(), y.long(), scale=255.0)
    return Splits(train=splits["train"], test=splits["test"], classes=classes)


def _read(reader: Callable[[str], torch.Tensor], path: Path, name: str) -> torch.Tensor:
    try:
        return reader(str(path))
    except Exception as exc:  # noqa: BLE001 - the reader asserts, raises TypeError, ValueError...
        why = "bad header" if isinstance(exc, AssertionError) else detail(exc)
        raise HpplugError(f"{name}: {path} cannot be read as an MNIST-format IDX file ({why}); replace it with "
                          "the original file (hpplug.idx.write_mnist writes your own)") from None


class MNIST(Dataset):
    """MNIST: 60,000 + 10,000 handwritten 28x28 digits (torchvision's files and download)."""

    def load(self, root: Path, download: bool) -> Splits:
        return load_idx_splits("mnist", "MNIST", root, download)
