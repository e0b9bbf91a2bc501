"""digits, mnist and fashion-mnist: the same tensors as hpplug.data gives, and one-line errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from hpplug import Dataset, TensorSplit
from hpplug.discovery import BUILTIN_DISTRIBUTIONS, check_class
from hpplug.idx import MNIST_FILES, synthetic_digits, write_idx, write_mnist
from hpplug_datasets.digits import Digits
from hpplug_datasets.fashion_mnist import FashionMNIST
from hpplug_datasets.mnist import MNIST

IDX = [("mnist", MNIST, "MNIST"), ("fashion-mnist", FashionMNIST, "FashionMNIST")]
NAMES = {"digits", "mnist", "fashion-mnist", "cifar10", "imagefolder"}


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("idx")
    train, test = synthetic_digits(300, seed=1), synthetic_digits(100, seed=2, split="test")
    for folder in ("MNIST", "FashionMNIST"):
        write_mnist(root, *train, *test, folder=folder)
    return root


def assert_split(split: object, x: torch.Tensor, y: torch.Tensor, scale: float) -> None:
    assert isinstance(split, TensorSplit)
    assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64 and split.x.is_contiguous()
    assert torch.equal(split.x, x) and torch.equal(split.y, y) and split.scale == scale


def test_the_plugins_are_builtin_entry_points_of_kind_dataset() -> None:
    assert "hpplug-datasets" in BUILTIN_DISTRIBUTIONS
    eps = {ep.name: ep for ep in entry_points(group="hpplug") if ep.dist and ep.dist.name == "hpplug-datasets"}
    assert set(eps) == NAMES
    for ep in eps.values():
        cls = ep.load()
        check_class(cls)
        assert issubclass(cls, Dataset) and cls.kind == "dataset" and (cls.__doc__ or "").strip()
        assert (Path(sys.modules[cls.__module__].__file__).parent / "README.md").is_file()


def test_importing_the_plugins_imports_no_torchvision_or_scikit_learn() -> None:
    """``hpplug --help`` loads every plugin class: the heavy readers wait for ``load``."""
    code = ("import sys, hpplug_datasets.digits, hpplug_datasets.mnist, hpplug_datasets.fashion_mnist, "
            "hpplug_datasets.cifar10, hpplug_datasets.imagefolder; "
            "print(sorted(m for m in ('torchvision', 'sklearn', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[]"


def test_digits_is_scikit_learns_split_the_same_way_every_time() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.uint8).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # hpplug 0.1's fixed shuffle
    splits = Digits().load(Path("unused"), download=True)
    assert_split(splits.train, x[order][:1437], y[order][:1437], 16.0)
    assert_split(splits.test, x[order][1437:], y[order][1437:], 16.0)
    assert len(splits.train) == 1437 and len(splits.test) == 360 and splits.val is None
    assert splits.classes == [str(d) for d in range(10)]


def test_loading_digits_reads_the_file_without_importing_scikit_learn() -> None:
    """Importing scikit-learn takes about a second of every digits run (issue 13's fast start)."""
    code = ("import sys; from pathlib import Path; from hpplug_datasets.digits import Digits; "
            "s = Digits().load(Path('unused'), download=False); print(len(s.train), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.split() == ["1437", "False"]


@pytest.mark.parametrize(("name", "cls", "folder"), IDX)
def test_idx_files_load_as_torchvision_reads_them(idx_root: Path, name: str, cls: type, folder: str) -> None:
    import torchvision

    reader = getattr(torchvision.datasets, folder)
    splits = cls().load(idx_root, download=False)
    for split, train in ((splits.train, True), (splits.test, False)):
        theirs = reader(str(idx_root), train=train, download=False)
        assert_split(split, theirs.data.unsqueeze(1), theirs.targets, 255.0)
    assert splits.train.x.shape == (300, 1, 28, 28) and len(splits.classes) == 10


@pytest.mark.parametrize(("name", "cls", "folder"), IDX)
def test_missing_files_offline_say_where_to_put_which(tmp_path: Path, name: str, cls: type, folder: str,
                                                      refused) -> None:
    raw = tmp_path / folder / "raw"
    line = refused(cls().load, tmp_path, True)  # download=True, but HPPLUG_OFFLINE=1
    assert line.startswith(f"{name} is not in {raw} and downloads are off (missing: ")
    assert all(file in line for file in MNIST_FILES.values())
    assert not (tmp_path / folder).exists(), "nothing was fetched or created"


def test_one_missing_file_is_named(tmp_path: Path, idx_root: Path, refused) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES.values():
        if name != "t10k-labels-idx1-ubyte":
            (raw / name).write_bytes((idx_root / "MNIST" / "raw" / name).read_bytes())
    assert "(missing: t10k-labels-idx1-ubyte)" in refused(MNIST().load, tmp_path, False)


def copy_mnist(src: Path, dst: Path) -> Path:
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES.values():
        (raw / name).write_bytes((src / "MNIST" / "raw" / name).read_bytes())
    return raw


@pytest.mark.parametrize(("file", "content"), [
    ("train-labels-idx1-ubyte", b""),
    ("train-images-idx3-ubyte", b"\x00\x00\x08\x03garbage"),
    ("t10k-images-idx3-ubyte", None),  # a label file where images belong
    ("t10k-labels-idx1-ubyte", b"\x00\x00\x08\x09" + b"\x00" * 40),  # nine dimensions
])
def test_a_damaged_idx_file_is_named(tmp_path: Path, idx_root: Path, file: str, content: bytes | None,
                                     refused) -> None:
    raw = copy_mnist(idx_root, tmp_path)
    (raw / file).write_bytes(content if content is not None else (raw / "t10k-labels-idx1-ubyte").read_bytes())
    line = refused(MNIST().load, tmp_path, False)
    assert f"{raw / file} cannot be read as an MNIST-format IDX file (" in line and "write_mnist" in line


def test_labels_that_do_not_match_the_images_are_refused(tmp_path: Path, idx_root: Path, refused) -> None:
    raw = copy_mnist(idx_root, tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte", torch.zeros(299, dtype=torch.uint8))
    assert "holds 300 images but" in refused(MNIST().load, tmp_path, False)
    write_idx(raw / "train-labels-idx1-ubyte", torch.full((300,), 12, dtype=torch.uint8))
    line = refused(MNIST().load, tmp_path, False)
    assert f"{raw / 'train-labels-idx1-ubyte'} holds label 12; mnist labels are 0..9" in line


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_torchvisions_legacy_processed_pickles_are_never_read(tmp_path: Path, idx_root: Path) -> None:
    copy_mnist(idx_root, tmp_path)
    marker = tmp_path / "ran"
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    for name in ("training.pt", "test.pt"):
        (processed / name).write_bytes(pickle.dumps(_Payload(marker)))
    splits = MNIST().load(tmp_path, download=False)
    assert len(splits.train) == 300 and not marker.exists()
