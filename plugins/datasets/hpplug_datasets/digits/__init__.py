"""``digits``: scikit-learn's bundled 8x8 handwritten digits, so a run needs no network."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import torch

from hpplug import Dataset, HpplugError, Splits, TensorSplit

CLASSES = [str(d) for d in range(10)]
DATA_FILE = ("datasets", "data", "digits.csv.gz")  # inside the sklearn package, as load_digits reads it


def read_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's ``load_digits()`` images as uint8 ``[1797, 8, 8]`` and labels, read from the
    file it ships without importing scikit-learn (that import alone takes about a second)."""
    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(f, *DATA_FILE) for f in folders if Path(f, *DATA_FILE).is_file()), None)
    if path is None:
        raise HpplugError("--dataset digits reads scikit-learn's bundled digits, and scikit-learn is not installed "
                          "(or has no datasets/data/digits.csv.gz): pip install scikit-learn")
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    x = torch.as_tensor(data[:, :-1].reshape(-1, 8, 8), dtype=torch.uint8)
    return x, torch.as_tensor(data[:, -1].astype(int, copy=False), dtype=torch.int64)


class Digits(Dataset):
    """scikit-learn's 1,797 8x8 digits (pixels 0..16); a fixed shuffle holds out the last 20% as test."""

    def load(self, root: Path, download: bool) -> Splits:
        x, y = read_digits()
        x = x.unsqueeze(1)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        cut = int(len(y) * 0.8)
        return Splits(train=TensorSplit(x[:cut], y[:cut], scale=16.0),
                      test=TensorSplit(x[cut:], y[cut:], scale=16.0), classes=CLASSES)
