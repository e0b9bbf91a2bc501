"""hpplug.idx: IDX files as the MNIST spec defines them, read back by torchvision itself."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hpplug.idx import MNIST_FILES, mnist_files_present, read_idx, synthetic_digits, write_idx, write_mnist


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
@pytest.mark.parametrize("as_torch", [False, True])
def test_round_trip_images(tmp_path: Path, name: str, as_torch: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    write_idx(tmp_path / name, torch.from_numpy(images) if as_torch else images)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8 and back.shape == (7, 5, 3)
    np.testing.assert_array_equal(back, images)
    assert list(tmp_path.iterdir()) == [tmp_path / name]  # no temporary file left behind


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_round_trip_labels(tmp_path: Path, name: str) -> None:
    labels = np.arange(300, dtype=np.uint8) % 10
    write_idx(tmp_path / name, labels)
    np.testing.assert_array_equal(read_idx(tmp_path / name), labels)


def test_image_header_matches_the_spec(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = write_idx(tmp_path / "x", images).read_bytes()
    # magic 0x00000803 (uint8, 3 dimensions), then 2, 3, 4 as big-endian int32, then the bytes.
    assert raw[:16] == bytes.fromhex("00000803" "00000002" "00000003" "00000004")
    assert struct.unpack(">i", raw[:4])[0] == 2051  # the number MNIST's page documents
    assert raw[16:] == images.tobytes() and len(raw) == 16 + 24


def test_label_header_matches_the_spec(tmp_path: Path) -> None:
    raw = write_idx(tmp_path / "y", np.array([7, 2, 1], dtype=np.uint8)).read_bytes()
    assert raw == bytes.fromhex("00000801" "00000003" "070201")
    assert struct.unpack(">i", raw[:4])[0] == 2049


def test_gz_suffix_writes_gzip(tmp_path: Path) -> None:
    labels = np.array([1, 2, 3], dtype=np.uint8)
    path = write_idx(tmp_path / "y.gz", labels)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(path.read_bytes()) == bytes.fromhex("00000801" "00000003" "010203")


def test_other_idx_types_are_big_endian(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.0]], dtype=np.float32)
    raw = write_idx(tmp_path / "f", values).read_bytes()
    assert raw[:4] == bytes.fromhex("00000d02") and raw[12:] == values.astype(">f4").tobytes()
    np.testing.assert_array_equal(read_idx(tmp_path / "f"), values)


@pytest.mark.parametrize("array, match", [
    (np.zeros(3, dtype=np.int64), "dtype int64"),
    (np.uint8(3), "1 to 255 dimensions"),
])
def test_write_rejects_what_idx_cannot_hold(tmp_path: Path, array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_idx(tmp_path / "bad", array)


@pytest.mark.parametrize("raw, match", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "not an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX type"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x00", "holds 9 bytes"),
])
def test_read_names_what_is_wrong(tmp_path: Path, raw: bytes, match: str) -> None:
    (tmp_path / "bad").write_bytes(raw)
    with pytest.raises(ValueError, match=match):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("folder", ["MNIST", "FashionMNIST"])
def test_torchvision_reads_write_mnist(tmp_path: Path, folder: str) -> None:
    from torchvision import datasets

    train_x, train_y = synthetic_digits(120, seed=0)
    test_x, test_y = synthetic_digits(30, seed=1, split="test")
    raw = write_mnist(tmp_path, train_x, train_y, test_x, test_y, folder=folder)
    assert raw == tmp_path / folder / "raw" and mnist_files_present(tmp_path, folder)
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_FILES.values())
    cls = getattr(datasets, folder)
    for train, (x, y) in ((True, (train_x, train_y)), (False, (test_x, test_y))):
        ds = cls(str(tmp_path), train=train, download=False)
        assert ds.data.dtype == torch.uint8 and ds.data.shape == x.shape
        assert torch.equal(ds.data, x) and torch.equal(ds.targets, y)
        image, label = ds[3]  # through PIL, as the article's DataLoader reads it
        assert np.array_equal(np.asarray(image), x[3].numpy()) and label == int(y[3])


def test_write_mnist_checks_its_inputs(tmp_path: Path) -> None:
    x = np.zeros((2, 28, 28), dtype=np.uint8)
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        write_mnist(tmp_path, x, [0, 1, 2], x, [0, 1])
    with pytest.raises(ValueError, match="uint8"):
        write_mnist(tmp_path, x.astype(np.float32), [0, 1], x, [0, 1])
    with pytest.raises(ValueError, match="0..255"):
        write_mnist(tmp_path, x, [0, 256], x, [0, 1])
    assert not mnist_files_present(tmp_path)


def test_synthetic_digits_shape_range_and_determinism() -> None:
    x, y = synthetic_digits(500, seed=3)
    assert x.shape == (500, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (500,) and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    x2, y2 = synthetic_digits(500, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, synthetic_digits(500, seed=4)[0])
    # MNIST-like: dark background, bright strokes, the digit away from the border.
    assert 15 < x.float().mean() < 60 and x.max() == 255
    border = torch.cat([x[:, :2].flatten(), x[:, -2:].flatten(), x[:, :, :2].flatten(), x[:, :, -2:].flatten()])
    assert border.float().mean() < x[:, 8:20, 8:20].float().mean() / 10
    assert synthetic_digits(4, seed=0, size=32)[0].shape == (4, 32, 32)


def test_synthetic_test_split_uses_other_sources() -> None:
    from hpplug.idx import _source_digits

    train, test = _source_digits("train")[0], _source_digits("test")[0]
    assert len(train) + len(test) == 1797 and len(test) == 360
    flat_train = {bytes(t.numpy().tobytes()) for t in train}
    assert sum(bytes(t.numpy().tobytes()) in flat_train for t in test) < 5  # sklearn has a few duplicates
