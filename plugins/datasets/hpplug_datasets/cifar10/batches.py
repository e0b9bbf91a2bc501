"""CIFAR-10's python-format batch files, unpickled without running anything they ask for.

The batches are pickles (a dict holding a numpy array and a list of labels). ``pickle.load``
calls whatever a file names, so a crafted file runs code; this reader resolves only the
few names a real CIFAR-10 file uses (numpy's array reconstruction and dtype) and refuses
every other before anything is called.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpplug import HpplugError
from hpplug_datasets._common import detail

ARCHIVE = "cifar-10-python.tar.gz"
HINT = f"replace it with the file from {ARCHIVE}"


class Refused(pickle.UnpicklingError):
    """A pickle asked for something a CIFAR-10 file never contains."""


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode``, which Python 3 pickles of ``bytes`` (protocol <= 2) call."""
    if encoding != "latin1":
        raise Refused(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed() -> dict[tuple[str, str], Callable[..., Any]]:
    """(module, name) -> the object, for every global a CIFAR-10 pickle may name."""
    try:  # numpy >= 2 moved these to numpy._core; pickles name either module
        from numpy._core import multiarray, numeric
    except ImportError:
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


class _Unpickler(pickle.Unpickler):
    """Resolves only :func:`_allowed` names; Python 2 strings decode as latin-1, like numpy's own."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, encoding="latin1")
        self.allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise Refused(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("a persistent id")


def read_pickle(path: Path) -> dict[str, Any]:
    """The dict a CIFAR-10 pickle holds, keys as ``str``; one-line errors name the file."""
    try:
        with open(path, "rb") as f:
            entry = _Unpickler(f).load()
    except Refused as exc:
        raise HpplugError(f"{path} is not a CIFAR-10 batch: it asks to call {exc}, which a CIFAR-10 file "
                          f"never does, so it was not unpickled; {HINT}") from None
    except Exception as exc:  # noqa: BLE001 - truncated or garbled pickles raise anything
        raise HpplugError(f"{path} cannot be read as a CIFAR-10 pickle ({detail(exc)}); {HINT}") from None
    if not isinstance(entry, dict):
        raise HpplugError(f"{path} holds a {type(entry).__name__}, not the dict a CIFAR-10 batch holds; {HINT}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images, uint8 ``[N, 3, 32, 32]``, and int64 labels ``[N]``."""
    entry = read_pickle(path)
    data, labels = entry.get("data"), entry.get("labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        found = (f"a {data.dtype} array of shape {list(data.shape)}" if isinstance(data, np.ndarray)
                 else "none" if data is None else f"a {type(data).__name__}")
        raise HpplugError(f"{path}: 'data' must be a uint8 array [N, 3072] (32x32 RGB images, channels first), "
                          f"found {found}; {HINT}")
    try:
        y = np.asarray(labels) if isinstance(labels, (list, tuple, np.ndarray)) else None
    except (TypeError, ValueError):  # a ragged list
        y = None
    if y is None or y.ndim != 1 or len(y) != len(data) or (len(y) and not np.issubdtype(y.dtype, np.integer)):
        raise HpplugError(f"{path}: 'labels' must be a list of {len(data)} integers, one per image; {HINT}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise HpplugError(f"{path}: labels must lie in 0..{num_classes - 1} (one per name in batches.meta), "
                          f"found {int(y.min())}..{int(y.max())}; {HINT}")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


def read_classes(path: Path) -> list[str]:
    """The class names in ``batches.meta``."""
    names = read_pickle(path).get("label_names")
    if not (isinstance(names, list) and names and all(isinstance(n, (str, bytes)) for n in names)):
        raise HpplugError(f"{path}: 'label_names' must be a non-empty list of class names; {HINT}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
