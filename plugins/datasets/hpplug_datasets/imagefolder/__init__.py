"""``imagefolder``: your own images, one folder per class, for train and val and/or test.

``DIR/train/<class>/*.png`` (and ``DIR/val/<class>/``, ``DIR/test/<class>/`` when present).
Files are listed at load time and decoded lazily, one per item, so a large folder can be
streamed by DataLoader workers; a small one is loaded into memory by hpplug.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from hpplug import Dataset, HpplugError, Param, Splits
from hpplug_datasets._common import detail, shown

if TYPE_CHECKING:
    import PIL.Image

TORCHVISION_SUFFIXES = frozenset({".jpg", ".jpeg", ".gif", ".webp"})  # torchvision.io decodes these
# Pillow decodes these: torchvision.io cannot read BMP or TIFF, and its libpng prints warnings
# and errors straight to stderr (a second line beside hpplug's one-line error).
PIL_SUFFIXES = frozenset({".png", ".bmp", ".tif", ".tiff"})
SUFFIXES = TORCHVISION_SUFFIXES | PIL_SUFFIXES
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # Pillow's
WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # 16-bit grayscale


def decode(path: str, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """One image file as uint8 ``[channels, *size]``; an undecodable file is a one-line error."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    try:
        raw = Path(path).read_bytes()
        if raw.startswith(PNG_SIGNATURE) or Path(path).suffix.lower() in PIL_SUFFIXES:
            pixels = _pillow(raw, channels)
        else:
            data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            pixels = decode_image(data, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except Exception as exc:  # noqa: BLE001 - decoders raise RuntimeError, OSError, ValueError...
        raise undecodable(path, exc) from None
    if pixels.ndim == 4:  # an animated GIF: its first frame
        pixels = pixels[0]
    if tuple(pixels.shape[-2:]) != size:
        pixels = F.resize(pixels, list(size), antialias=True)
    return pixels


def _pillow(raw: bytes, channels: int) -> torch.Tensor:
    """Pillow's decoding as uint8 ``[C, H, W]``; 16-bit grayscale keeps its top 8 bits (as torchvision does)."""
    from PIL import Image

    with open_image(io.BytesIO(raw)) as image:
        if image.mode in WIDE_GRAY_MODES:
            image = Image.fromarray((np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8))
        pixels = torch.from_numpy(np.array(image.convert("L" if channels == 1 else "RGB")))
    return pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


class ImageFiles(TorchDataset):
    """Image files with their class indices, decoded on access to uint8 ``[C, H, W]``.

    Holds only paths and numbers, so it pickles cheaply into DataLoader worker processes.
    """

    def __init__(self, files: list[str], labels: list[int], channels: int, size: tuple[int, int]) -> None:
        self.files, self.targets, self.channels, self.size = files, labels, channels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return decode(self.files[i], self.channels, self.size), self.targets[i]


def class_folders(split: Path) -> list[Path]:
    """The visible sub-folders of a split folder, sorted by name."""
    return sorted((p for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def image_files(folder: Path) -> list[str]:
    """Every image file under ``folder`` (sub-folders too, not followed through links), sorted.

    Only regular files: reading a named pipe called ``x.png`` would block the run.
    """
    found = []
    for top, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths = (os.path.join(top, n) for n in sorted(names)
                 if not n.startswith(".") and Path(n).suffix.lower() in SUFFIXES)
        found += [path for path in paths if os.path.isfile(path)]
    return found


def scan(split: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """A split's files and labels; its class folders must be among ``classes`` (train's)."""
    folders = class_folders(split)
    if not folders:
        raise HpplugError(f"imagefolder: {shown(split)} has no class folders: put each class's images in "
                          f"{shown(split)}/<class>/ (e.g. {shown(split)}/cat/1.png)")
    index = {name: i for i, name in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    for folder in folders:
        if folder.name not in index:
            raise HpplugError(f"imagefolder: {shown(folder)} is not a class in train/ (classes: "
                              f"{shown(', '.join(classes))}): rename it to one of them or add it to train/")
        found = image_files(folder)
        if not found:
            raise HpplugError(f"imagefolder: class folder {shown(folder)} holds no images "
                              f"({', '.join(sorted(SUFFIXES))}): add some or remove the folder")
        files += found
        labels += [index[folder.name]] * len(found)
    return files, labels


def open_image(source: str | io.BytesIO) -> PIL.Image.Image:
    """Pillow's lazy ``Image.open``, with a message that does not repeat the file's name."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(source)
    except UnidentifiedImageError:
        raise ValueError("not an image file in a format Pillow knows") from None


def first_image_shape(path: str) -> tuple[int, tuple[int, int]]:
    """Channels (1 for grayscale, else 3) and ``(height, width)`` from a file's header."""
    try:
        with open_image(path) as image:
            return (1 if image.mode in GRAY_MODES else 3), (image.height, image.width)
    except Exception as exc:  # noqa: BLE001 - Pillow raises UnidentifiedImageError, OSError...
        raise undecodable(path, exc) from None


def undecodable(path: str, exc: Exception) -> HpplugError:
    """The one error for an image file that cannot be read, wherever it is found out."""
    return HpplugError(f"imagefolder: cannot decode {shown(path)} ({detail(exc)}): replace or remove it")


class ImageFolder(Dataset):
    """Your images: ``DIR/train/<class>/*.png|jpg|...``, with ``val/`` and/or ``test/`` alike."""

    params = {
        "path": Param(str, "", "the folder holding train/ (and val/, test/); empty: --data-root"),
        "size": Param(int, 32, "side in pixels every image is resized to (0: the first training image's size)",
                      min=0, max=4096),
        "channels": Param(int, 0, "1 (grayscale) or 3 (RGB); 0: as the first training image", choices=(0, 1, 3)),
    }

    def load(self, root: Path, download: bool) -> Splits:
        folder = Path(self.path).expanduser() if self.path else Path(root)
        if not folder.is_dir():
            raise HpplugError(f"imagefolder: {shown(folder)} is not a folder: put your images in "
                              f"{shown(folder)}/train/<class>/ (and val/ or test/ beside train/), or name the "
                              "folder with --imagefolder.path")
        if not (folder / "train").is_dir():
            raise HpplugError(f"imagefolder: {shown(folder)} has no train/ folder: put the training images in "
                              f"{shown(folder)}/train/<class>/ (val/ and test/ alike)")
        try:
            classes = [p.name for p in class_folders(folder / "train")]
            found = {split: scan(folder / split, classes) for split in ("train", "val", "test")
                     if split == "train" or (folder / split).is_dir()}
        except OSError as exc:
            raise HpplugError(f"imagefolder: cannot list {shown(exc.filename or folder)} ({detail(exc)})") from None
        channels, shape = first_image_shape(found["train"][0][0])
        size = (self.size, self.size) if self.size else shape
        splits = {split: ImageFiles(files, labels, self.channels or channels, size)
                  for split, (files, labels) in found.items()}
        return Splits(train=splits["train"], val=splits.get("val"), test=splits.get("test"), classes=classes)
