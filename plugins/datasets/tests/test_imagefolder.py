"""imagefolder on image files the tests write: classes, splits, decoding, resizing, one-line errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hpplug_datasets.imagefolder import ImageFiles, ImageFolder

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def flat(colour: tuple[int, ...], height: int, width: int) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (height, width, len(colour))).copy()


@pytest.fixture
def rgb(tmp_path: Path) -> Path:
    """train/ with three classes of flat-coloured images of several sizes, val/ with all, test/ with dog only."""
    for name, colour in COLOURS.items():
        for i, (h, w) in enumerate([(20, 24), (16, 16), (40, 12)]):
            save(tmp_path / "train" / name / f"{i}.png", flat(colour, h, w))
        save(tmp_path / "val" / name / "v.png", flat(colour, 18, 18))
    save(tmp_path / "test" / "dog" / "a.png", flat(COLOURS["dog"], 9, 9))
    save(tmp_path / "test" / "dog" / "deeper" / "b.png", flat(COLOURS["dog"], 9, 9))
    return tmp_path


@pytest.fixture
def gray(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for i in range(2):
            save(tmp_path / "train" / name / f"{i}.png", rng.integers(0, 256, (10, 10), dtype=np.uint8))
    return tmp_path


def test_classes_are_the_sorted_train_folders_and_val_test_share_their_indices(rgb: Path) -> None:
    splits = ImageFolder(size=8).load(rgb, download=False)
    assert splits.classes == ["cat", "dog", "emu"]
    assert [splits.train[i][1] for i in range(len(splits.train))] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [y for _, y in splits.val] == [0, 1, 2] and [y for _, y in splits.test] == [1, 1]
    for split in (splits.train, splits.val, splits.test):
        for x, y in split:
            colour = torch.tensor(COLOURS[splits.classes[y]], dtype=torch.uint8)
            assert x.dtype == torch.uint8 and x.shape == (3, 8, 8)
            assert torch.equal(x, colour[:, None, None].expand(3, 8, 8)), "resized, colour kept"


def test_only_the_splits_that_exist_are_given(rgb: Path) -> None:
    for split in ("val", "test"):
        for file in sorted((rgb / split).rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
        (rgb / split).rmdir()
    splits = ImageFolder().load(rgb, download=False)
    assert splits.val is None and splits.test is None and len(splits.train) == 9


def test_an_image_of_the_target_size_keeps_its_exact_pixels(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    save(tmp_path / "train" / "x" / "0.png", pixels)
    save(tmp_path / "train" / "x" / "1.bmp", pixels)  # Pillow decodes what torchvision.io cannot
    splits = ImageFolder(size=12).load(tmp_path, download=False)
    for x, _ in splits.train:
        assert torch.equal(x, torch.from_numpy(pixels).permute(2, 0, 1))


def test_default_size_is_32_and_size_0_keeps_the_first_images(rgb: Path) -> None:
    assert ImageFolder().load(rgb, download=False).train[5][0].shape == (3, 32, 32)
    splits = ImageFolder(size=0).load(rgb, download=False)  # train/cat/0.png is 20x24
    assert {tuple(x.shape) for x, _ in splits.train} == {(3, 20, 24)} and splits.test[0][0].shape == (3, 20, 24)


def test_grayscale_is_detected_and_channels_can_be_forced(gray: Path) -> None:
    pixels = np.array(Image.open(gray / "train" / "a" / "0.png"))
    splits = ImageFolder(size=10).load(gray, download=False)
    assert torch.equal(splits.train[0][0], torch.from_numpy(pixels)[None])
    as_rgb = ImageFolder(size=10, channels=3).load(gray, download=False).train[0][0]
    assert as_rgb.shape == (3, 10, 10) and all(torch.equal(c, torch.from_numpy(pixels)) for c in as_rgb)


def test_rgb_can_be_read_as_grayscale(rgb: Path) -> None:
    x, y = ImageFolder(size=4, channels=1).load(rgb, download=False).train[0]
    assert x.shape == (1, 4, 4) and y == 0


def test_jpeg_gif_and_16_bit_png_decode(tmp_path: Path) -> None:
    save(tmp_path / "train" / "a" / "0.jpg", flat((90, 90, 90), 8, 8))
    Image.fromarray(flat((1, 2, 3), 8, 8)).save(tmp_path / "train" / "a" / "1.gif")
    save(tmp_path / "train" / "b" / "2.png", np.full((8, 8), 65535, dtype=np.uint16))
    splits = ImageFolder(size=8, channels=3).load(tmp_path, download=False)
    assert [tuple(x.shape) for x, _ in splits.train] == [(3, 8, 8)] * 3
    assert (splits.train[0][0].int() - 90).abs().max() <= 2 and splits.train[2][0].min() == 255


def test_other_files_and_hidden_ones_are_ignored_and_path_overrides_the_root(rgb: Path, tmp_path: Path) -> None:
    (rgb / "train" / "cat" / "notes.txt").write_text("not an image")
    (rgb / "train" / "cat" / ".DS_Store").write_bytes(b"\0")
    (rgb / "train" / ".cache").mkdir()
    (rgb / "train" / "README.md").write_text("about the data")
    splits = ImageFolder(path=str(rgb)).load(tmp_path / "elsewhere", download=False)
    assert splits.classes == ["cat", "dog", "emu"] and len(splits.train) == 9


def test_a_split_pickles_for_worker_processes_and_streams_through_a_dataloader(rgb: Path) -> None:
    train = ImageFolder(size=8).load(rgb, download=False).train
    assert isinstance(train, ImageFiles)
    copy = pickle.loads(pickle.dumps(train))
    assert torch.equal(copy[4][0], train[4][0]) and copy[4][1] == train[4][1]
    x, y = next(iter(DataLoader(train, batch_size=9, num_workers=2)))
    assert x.shape == (9, 3, 8, 8) and x.dtype == torch.uint8 and y.tolist() == train.targets


# --- one-line errors ------------------------------------------------------------------------


def test_a_missing_folder(tmp_path: Path, refused) -> None:
    line = refused(ImageFolder().load, tmp_path / "nowhere", False)
    assert line.startswith(f"imagefolder: {tmp_path / 'nowhere'} is not a folder: put your images in ")
    assert "--imagefolder.path" in line
    (tmp_path / "file").write_text("x")
    assert f"{tmp_path / 'file'} is not a folder" in refused(ImageFolder(path=str(tmp_path / "file")).load, tmp_path,
                                                              False)


def test_no_train_folder(tmp_path: Path, refused) -> None:
    save(tmp_path / "test" / "cat" / "0.png", flat((1, 1, 1), 4, 4))
    assert refused(ImageFolder().load, tmp_path, False) == (
        f"imagefolder: {tmp_path} has no train/ folder: put the training images in {tmp_path}/train/<class>/ "
        "(val/ and test/ alike)")


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_without_class_folders(rgb: Path, split: str, refused) -> None:
    folder = rgb / "empty"
    save(folder / "train" / "0.png", flat((1, 1, 1), 4, 4)) if split == "train" else None
    if split == "val":
        folder = rgb
        for file in (rgb / "val").rglob("*.png"):
            file.rename(rgb / "val" / f"{file.parent.name}.png")
        for sub in ("cat", "dog", "emu"):
            (rgb / "val" / sub).rmdir()
    line = refused(ImageFolder(path=str(folder)).load, rgb, False)
    assert line.startswith(f"imagefolder: {folder / split} has no class folders: put each class's images in ")


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_class_folder_without_images(rgb: Path, split: str, refused) -> None:
    (rgb / split / "cat").mkdir(exist_ok=True)
    for file in (rgb / split / "cat").iterdir():
        file.unlink()
    (rgb / split / "cat" / "notes.txt").write_text("no image here")
    line = refused(ImageFolder().load, rgb, False)
    assert line.startswith(f"imagefolder: class folder {rgb / split / 'cat'} holds no images (.bmp, .gif, ")


def test_a_val_class_that_train_does_not_have(rgb: Path, refused) -> None:
    save(rgb / "val" / "yak" / "0.png", flat((1, 1, 1), 4, 4))
    assert refused(ImageFolder().load, rgb, False) == (
        f"imagefolder: {rgb / 'val' / 'yak'} is not a class in train/ (classes: cat, dog, emu): rename it to one "
        "of them or add it to train/")


def test_a_folder_name_with_a_newline_stays_on_one_line(rgb: Path, refused) -> None:
    save(rgb / "val" / "y\nak" / "0.png", flat((1, 1, 1), 4, 4))
    assert f"{rgb / 'val'}/y\\nak is not a class in train/" in refused(ImageFolder().load, rgb, False)


def test_a_named_pipe_is_not_an_image_and_is_never_opened(rgb: Path, refused) -> None:
    """Reading a pipe would block the run until something writes to it."""
    for file in (rgb / "test" / "dog").rglob("*.png"):
        file.unlink()
    os.mkfifo(rgb / "test" / "dog" / "pipe.png")
    line = refused(ImageFolder().load, rgb, False)
    assert line.startswith(f"imagefolder: class folder {rgb / 'test' / 'dog'} holds no images")


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, b"just text"])
def test_an_image_that_cannot_be_decoded_is_named_when_it_is_read(rgb: Path, content: bytes, refused) -> None:
    bad = rgb / "train" / "dog" / "1.png"
    bad.write_bytes(content)
    splits = ImageFolder().load(rgb, download=False)
    line = refused(splits.train.__getitem__, 4)
    assert line.startswith(f"imagefolder: cannot decode {bad} (") and line.endswith("): replace or remove it")
    assert ".cpp" not in line
    assert splits.train[3][1] == 1, "the other images still read"


def test_a_first_image_that_cannot_be_decoded_is_named_at_load(rgb: Path, refused) -> None:
    bad = rgb / "train" / "cat" / "0.png"
    bad.write_bytes(b"not a png")
    assert refused(ImageFolder().load, rgb, False).startswith(f"imagefolder: cannot decode {bad} (")


def test_a_truncated_image_is_named(rgb: Path, refused) -> None:
    good = rgb / "train" / "emu" / "0.png"
    good.write_bytes(good.read_bytes()[:60])
    splits = ImageFolder().load(rgb, download=False)
    assert refused(splits.train.__getitem__, 6).startswith(f"imagefolder: cannot decode {good} (")


DAMAGED = {
    "png-header-only.png": lambda good: good[:8] + b"\0" * 30,
    "png-truncated.png": lambda good: good[:200],
    "png-named-jpg.jpg": lambda good: good[:200],
    "jpeg-garbage.jpg": lambda good: b"\xff\xd8\xff\xe0garbage",
    "gif-header-only.gif": lambda good: b"GIF89a",
    "webp-garbage.webp": lambda good: b"RIFF\x10\0\0\0WEBPVP8 garbage",
    "bmp-truncated.bmp": lambda good: b"BM" + b"\0" * 40,
}
def test_damaged_images_print_nothing_beside_the_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                         refused) -> None:
    """Decoders that write to the process's stderr themselves (libpng does) would add lines;
    ``capfd`` sees what is written to file descriptor 2, not only to ``sys.stderr``."""
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    good = save(tmp_path / "train" / "a" / "0-good.png", noise).read_bytes()
    assert len(good) > 1000, "long enough to truncate"
    for name, make in DAMAGED.items():
        (tmp_path / "train" / "a" / name).write_bytes(make(good))
    train = ImageFolder().load(tmp_path, download=False).train
    assert train[0][0].shape == (3, 32, 32)
    for i in range(1, len(train)):
        line = refused(train.__getitem__, i)
        assert line.startswith("imagefolder: cannot decode ") and line.endswith(": replace or remove it")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
