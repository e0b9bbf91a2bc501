"""MNIST's IDX file format, and synthetic MNIST-like digits to fill it without network.

Tests and the benchmark need real MNIST-format files that torchvision's ``datasets.MNIST``
reads with ``download=False`` on machines that cannot reach the internet; users can convert
their own images with :func:`write_mnist` to train on them through ``--dataset mnist``.

The format (http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic number
``0x0000 <type> <ndim>`` (``0x00000803``: uint8, 3-D images; ``0x00000801``: uint8, 1-D
labels), then each dimension's size as a big-endian int32, then the values in C order,
big-endian.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from hpplug.atomic import write_atomic

# IDX type code -> big-endian numpy dtype, as the format defines them.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}

# The four files torchvision's MNIST and FashionMNIST read from ``<root>/<Class>/raw``.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

ArrayLike = Any  # a numpy array or a torch tensor


def _numpy(array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def encode_idx(array: ArrayLike) -> bytes:
    """The IDX bytes of ``array`` (header and data); see :func:`write_idx`."""
    a = _numpy(array)
    code = _CODES.get(a.dtype.newbyteorder("="))
    if code is None:
        names = ", ".join(str(d.newbyteorder("=")) for d in IDX_TYPES.values())
        raise ValueError(f"IDX cannot hold dtype {a.dtype}; use one of {names} (MNIST uses uint8)")
    if not 1 <= a.ndim <= 255:
        raise ValueError(f"IDX needs an array of 1 to 255 dimensions, got {a.ndim}")
    if any(s >= 2**31 for s in a.shape):
        raise ValueError(f"IDX dimension sizes are int32; {a.shape} is too large")
    header = struct.pack(f">BBBB{a.ndim}i", 0, 0, code, a.ndim, *a.shape)
    return header + np.ascontiguousarray(a, dtype=IDX_TYPES[code]).tobytes()


def decode_idx(raw: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse IDX bytes into a native-endian numpy array; errors say what is wrong."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{name} is not an IDX file: it must start with two zero bytes")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise ValueError(f"{name}: unknown IDX type code 0x{code:02X}")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{name}: truncated IDX header ({ndim} dimensions declared)")
    shape = struct.unpack_from(f">{ndim}i", raw, 4)
    dtype = IDX_TYPES[code]
    expected = 4 + 4 * ndim + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{name}: header says shape {shape} ({expected} bytes) but it holds {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def write_idx(path: str | os.PathLike[str], array: ArrayLike) -> Path:
    """Write ``array`` (numpy or torch; uint8 for MNIST) as an IDX file; ``.gz`` => gzip.

    The file appears atomically (:func:`hpplug.atomic.write_atomic`), so a reader running
    at the same time never sees half a file. Returns the path.
    """
    path = Path(path)
    data = encode_idx(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, gzip.compress(data, compresslevel=6) if path.suffix == ".gz" else data)
    return path


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or not, whatever its name) into a numpy array."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return decode_idx(raw, str(path))


def _labels_uint8(labels: ArrayLike) -> np.ndarray:
    y = _numpy(labels)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(f"labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 255):
        raise ValueError(f"labels must lie in 0..255 to fit MNIST's uint8, got {y.min()}..{y.max()}")
    return y.astype(np.uint8)


def write_mnist(root: str | os.PathLike[str], train_images: ArrayLike, train_labels: ArrayLike,
                test_images: ArrayLike, test_labels: ArrayLike, folder: str = "MNIST") -> Path:
    """Write the four files ``torchvision.datasets.MNIST(root, download=False)`` reads.

    Images are uint8 ``[N, H, W]``; labels any integers in 0..255 (stored as uint8). Use
    ``folder="FashionMNIST"`` for ``datasets.FashionMNIST``. The files are uncompressed:
    torchvision only decompresses ``.gz`` files when it downloads them. Returns
    ``root/<folder>/raw``.
    """
    raw = Path(root) / folder / "raw"
    splits = {"train": (train_images, train_labels), "test": (test_images, test_labels)}
    arrays = {}
    for split, (images, labels) in splits.items():
        x, y = _numpy(images), _labels_uint8(labels)
        if x.dtype != np.uint8 or x.ndim != 3:
            raise ValueError(f"{split} images must be uint8 [N, H, W], got {x.dtype} of shape {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"{split}: {len(x)} images but {len(y)} labels")
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
    for key, name in MNIST_FILES.items():
        write_idx(raw / name, arrays[key])
    return raw


def mnist_files_present(root: str | os.PathLike[str], folder: str = "MNIST") -> bool:
    """Whether ``root/<folder>/raw`` holds all four files torchvision needs."""
    raw = Path(root) / folder / "raw"
    return all((raw / name).is_file() for name in MNIST_FILES.values())


def _source_digits(split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits in [0, 1]: index % 5 == 0 is test, the rest train."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    keep = (np.arange(len(bunch.target)) % 5 == 0) == (split == "test")
    images = torch.as_tensor(bunch.images[keep], dtype=torch.float32).div_(16.0)
    return images.unsqueeze(1), torch.as_tensor(bunch.target[keep], dtype=torch.int64)


def synthetic_digits(n: int, seed: int, size: int = 28, split: Literal["train", "test"] = "train",
                     chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` MNIST-like digits: uint8 images ``[n, size, size]`` and int64 labels.

    Each is a random one of scikit-learn's bundled 8x8 digits, upscaled (bicubic) to about
    20x20 (MNIST's digit box) with its contrast sharpened, scaled by 0.9-1.1 and shifted by
    at most 3 px (mostly less) in the canvas with one bilinear resample, with intensity
    jitter and a little noise. ``split="test"`` draws from source images disjoint from
    ``"train"``'s (index % 5 == 0), so test accuracy measures generalisation rather than
    memorised sources. Vectorised: 60,000 in about a second.
    """
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    sources, source_labels = _source_digits(split)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(sources), (n,), generator=g)
    box = max(8, round(size * 20 / 28))
    upscaled = F.interpolate(sources, size=(box, box), mode="bicubic", align_corners=False).clamp_(0, 1)
    # Sharpen the blurry upscale towards MNIST's mostly-saturated strokes.
    upscaled = ((upscaled - 0.3) * 2.0).clamp_(0, 1)
    pad = (size - box) // 2
    canvases = F.pad(upscaled, (pad, size - box - pad, pad, size - box - pad))
    images = torch.empty(n, size, size, dtype=torch.uint8)
    max_shift = 3 * size / 28
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        scale = torch.empty(m).uniform_(0.9, 1.1, generator=g)
        # Mostly near the centre, as MNIST's centre-of-mass centring leaves them, never past 3 px.
        shift = (torch.randn(m, 2, generator=g) * max_shift / 3).clamp_(-max_shift, max_shift) * (2 / size)
        theta = torch.zeros(m, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
        theta[:, :, 2] = -shift / scale[:, None]
        grid = F.affine_grid(theta, [m, 1, size, size], align_corners=False)
        batch = canvases[pick[start:start + m]]
        out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(1)
        gain = torch.empty(m, 1, 1).uniform_(0.85, 1.1, generator=g)
        out = out * gain + torch.randn(m, size, size, generator=g) * 0.02
        images[start:start + m] = out.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return images, source_labels[pick]
