"""``digits``: scikit-learn's bundled 8x8 handwritten digits, so a run needs no network."""

from __future__ import annotations

from pathlib import Path

import torch

from hpplug import Dataset, Splits, TensorSplit

CLASSES = [str(d) for d in range(10)]


class Digits(Dataset):
    """scikit-learn's 1,797 8x8 digits (pixels 0..16); a fixed shuffle holds out the last 20% as test."""

    def load(self, root: Path, download: bool) -> Splits:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.as_tensor(bunch.images, dtype=torch.uint8).unsqueeze(1)
        y = torch.as_tensor(bunch.target, dtype=torch.int64)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        cut = int(len(y) * 0.8)
        return Splits(train=TensorSplit(x[:cut], y[:cut], scale=16.0),
                      test=TensorSplit(x[cut:], y[cut:], scale=16.0), classes=CLASSES)
