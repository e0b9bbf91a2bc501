"""Feeding batches to the engine: a data set's splits, held in memory or streamed.

Two paths give the same batches in the same order:

- **in memory** (the fast path): a split held as one tensor on the device, batched by
  indexing. It is why a small model trains several times faster here than behind a
  DataLoader. Used whenever the split is a :class:`~hpplug.TensorSplit` or fits in memory.
- **streamed**: torch's ``DataLoader`` (worker processes, pinned memory, prefetch) reads
  exactly the indices the engine asks for, so sample order stays a pure function of
  (seed, epoch) and a resumed run or another process count trains on the same samples.

Either way a batch reaches the device as raw inputs (uint8 pixels or floats) and becomes
floats there, so augmentation plugins act on it after the transfer, on both paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from hpplug.components import Splits, TensorSplit
from hpplug.errors import HpplugError

# A split is held in memory when it takes at most this share of the memory available.
MEMORY_SHARE = 0.25
VAL_SPLIT_SEED = 20_170_101  # fixed: every run and every process holds out the same samples


# --- items -----------------------------------------------------------------------------


def as_input(value: Any, where: str) -> torch.Tensor:
    """An item's input as a tensor: tensors as they are, PIL images as uint8 ``[C, H, W]``."""
    if isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "getbands"):  # a PIL image, without importing PIL
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(value)
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return torch.from_numpy(value)
    except ImportError:  # pragma: no cover - numpy ships with torch
        pass
    raise HpplugError(f"{where}: the input is a {type(value).__name__}; a data set's items must be "
                      "(input, label) with the input a tensor or a PIL image")


def as_label(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise HpplugError(f"{where}: the label is a bool; labels must be ints (class indices)")
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    if isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, float)):
        return int(value)
    raise HpplugError(f"{where}: the label is {value!r} ({type(value).__name__}); labels must be ints "
                      "(class indices)")


def split_item(item: Any, where: str) -> tuple[torch.Tensor, int]:
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        kind = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
        raise HpplugError(f"{where} is {kind}; a data set's items must be (input, label) pairs")
    return as_input(item[0], where), as_label(item[1], where)


class Collate:
    """Stack ``(input, label)`` items into a batch, checking each item (picklable for workers)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [split_item(item, f"{self.name} item") for item in items]
        shapes = {tuple(x.shape) for x, _ in pairs}
        if len(shapes) > 1:
            raise HpplugError(f"{self.name}: inputs of unequal shape in one batch ({', '.join(map(str, sorted(shapes)[:3]))}); "
                              "every input must have the same shape (resize images, pad sequences)")
        return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs], dtype=torch.int64)


def read(loader: DataLoader) -> Iterator[Any]:
    """Iterate ``loader``; an error in a worker process becomes its own one line again
    (torch re-raises it with the worker's traceback folded into the message)."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - whatever the data set raised in a worker
            text = str(exc)
            if not text.startswith("Caught "):
                raise
            last = text.strip().splitlines()[-1]
            if isinstance(exc, HpplugError):
                raise HpplugError(last.partition(": ")[2] or last) from None
            raise HpplugError(f"reading the data set failed in a DataLoader worker: {last}") from None
        yield batch


def batches_of(dataset: Dataset, name: str, workers: int, **options: Any) -> Iterator[Any]:
    """A ``DataLoader`` over ``dataset``, read through :func:`read`. It draws its workers' seed
    from a generator of its own: from the global one it would shift the model's
    initialization and dropout masks, and the streamed run would differ from the in-memory one."""
    return read(DataLoader(dataset, num_workers=workers, collate_fn=Collate(name),
                           generator=torch.Generator().manual_seed(0), **options))


def scale_of(x: torch.Tensor) -> float:
    """uint8 inputs are 8-bit pixels (divided by 255, as torchvision's ToTensor); floats stay."""
    return 255.0 if x.dtype == torch.uint8 else 1.0


# --- sources ---------------------------------------------------------------------------


class Source:
    """One split, able to yield the batches for given index chunks on a device.

    Chunks index the source (0 .. len-1); ``index[i]`` is that sample's position in the
    data set's own split, what plugins see as ``Batch.index``.
    """

    name: str
    scale: float
    input_shape: tuple[int, ...]
    index: torch.Tensor

    def __len__(self) -> int:
        raise NotImplementedError

    def labels(self) -> torch.Tensor:
        raise NotImplementedError

    def batches(self, chunks: Sequence[torch.Tensor], device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Raw ``(x, y)`` on ``device`` for each chunk of indices, in order."""
        raise NotImplementedError

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs -> the floats a model sees (uint8 pixels -> [0, 1])."""
        return x.float().div_(self.scale) if self.scale != 1.0 else x.float()


class InMemory(Source):
    """A split held as tensors on one device; batches are index operations."""

    def __init__(self, name: str, x: torch.Tensor, y: torch.Tensor, scale: float,
                 index: torch.Tensor | None = None) -> None:
        self.name, self.x, self.y, self.scale = name, x, y.long(), float(scale)
        self.input_shape = tuple(x.shape[1:])
        self.index = torch.arange(len(y), device=y.device) if index is None else index

    def __len__(self) -> int:
        return len(self.y)

    def labels(self) -> torch.Tensor:
        return self.y

    @property
    def nbytes(self) -> int:
        return self.x.numel() * self.x.element_size() + self.y.numel() * 8

    def to(self, device: torch.device) -> InMemory:
        return InMemory(self.name, self.x.to(device), self.y.to(device), self.scale, self.index.to(device))

    def subset(self, index: torch.Tensor) -> InMemory:
        index = index.to(self.y.device)
        return InMemory(self.name, self.x[index], self.y[index], self.scale, self.index[index])

    def batches(self, chunks, device):
        for idx in chunks:
            idx = idx.to(self.y.device)
            yield self.x[idx].to(device, non_blocking=True), self.y[idx].to(device, non_blocking=True)


class _Chunks(torch.utils.data.Sampler):
    """A batch sampler over precomputed index chunks (picklable for DataLoader workers)."""

    def __init__(self, chunks: Sequence[torch.Tensor]) -> None:
        self.chunks = [c.tolist() for c in chunks]

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


class Streamed(Source):
    """A split read item by item through a ``DataLoader`` with worker processes."""

    def __init__(self, name: str, dataset: Dataset, workers: int, input_shape: tuple[int, ...], scale: float,
                 targets: torch.Tensor | None = None, index: torch.Tensor | None = None) -> None:
        self.name, self.dataset, self.workers = name, dataset, workers
        self.input_shape, self.scale = tuple(input_shape), scale
        self._targets = targets
        self.index = torch.arange(len(dataset)) if index is None else index

    def __len__(self) -> int:
        return len(self.dataset)

    def labels(self) -> torch.Tensor:
        if self._targets is None:
            batches = batches_of(self.dataset, self.name, self.workers, batch_size=512)
            self._targets = torch.cat([y for _, y in batches]) if len(self.dataset) else torch.zeros(0, dtype=torch.int64)
        return self._targets

    def subset(self, index: torch.Tensor) -> Streamed:
        targets = None if self._targets is None else self._targets[index]
        return Streamed(self.name, Subset(self.dataset, index.tolist()), self.workers, self.input_shape, self.scale,
                        targets, self.index[index])

    def batches(self, chunks, device):
        full = [c for c in chunks if len(c)]
        batches = batches_of(self.dataset, self.name, self.workers, batch_sampler=_Chunks(full),
                         pin_memory=device.type == "cuda", prefetch_factor=4 if self.workers else None) \
            if full else iter(())
        for chunk in chunks:
            if len(chunk):  # a process's share of a short last batch can be empty
                x, y = next(batches)
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            else:
                yield torch.zeros((0, *self.input_shape), device=device), torch.zeros(0, dtype=torch.int64, device=device)


# --- building a run's data -------------------------------------------------------------


@dataclass
class RunData:
    """The splits a run trains and evaluates on, and what the model must fit."""

    train: Source
    val: Source | None
    test: Source | None
    num_classes: int
    val_origin: str | None  # "dataset" (its own split), "held-out" (from train) or None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.input_shape

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, Streamed)


def _first_item(dataset: Dataset, name: str) -> torch.Tensor:
    if len(dataset) == 0:
        raise HpplugError(f"the {name} split is empty")
    x, _ = split_item(dataset[0], f"{name} item 0")
    return x


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:  # pragma: no cover
        return 2**33


def _materialize(name: str, dataset: Dataset, workers: int) -> InMemory:
    """Read every item once (with workers) into one tensor."""
    xs, ys = zip(*batches_of(dataset, name, workers, batch_size=256))
    shapes = {tuple(x.shape[1:]) for x in xs}
    if len(shapes) > 1:
        raise HpplugError(f"{name}: inputs of unequal shape ({', '.join(map(str, sorted(shapes)[:3]))}); "
                          "every input must have the same shape (resize images, pad sequences)")
    x = torch.cat(xs)
    return InMemory(name, x, torch.cat(ys), scale_of(x))


def source(name: str, split: Dataset, loader: str, workers: int, device: torch.device) -> Source:
    """Hold ``split`` in memory when asked or when it fits, else stream it."""
    if isinstance(split, TensorSplit):
        return InMemory(name, split.x, split.y, split.scale)
    example = _first_item(split, name)
    estimate = len(split) * (example.numel() * example.element_size() + 8)
    if loader == "memory" or (loader == "auto" and estimate <= MEMORY_SHARE * _available_bytes(device)):
        return _materialize(name, split, workers)
    targets = getattr(split, "targets", None)
    targets = torch.as_tensor(targets, dtype=torch.int64) if targets is not None and len(targets) == len(split) else None
    scale = split.split.scale if isinstance(split, _RawTensorItems) else scale_of(example)
    return Streamed(name, split, workers, tuple(example.shape), scale, targets)


class _RawTensorItems(Dataset):
    """A ``TensorSplit`` read item by item with its raw values (uint8 stays uint8), for
    ``--loader stream``; ``targets`` spares reading every item for the labels."""

    def __init__(self, split: TensorSplit) -> None:
        self.split, self.targets = split, split.y

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.split.x[i], int(self.split.y[i])


def hold_out(train: Source, fraction: float) -> tuple[Source, Source]:
    """A fixed, seeded ``fraction`` of ``train`` as the validation split (same on every
    run and process), and the rest for training."""
    n = len(train)
    k = int(round(n * fraction))
    if k < 1 or k >= n:
        raise HpplugError(f"--val-fraction {fraction} of {n} training samples leaves "
                          f"{k} for validation and {n - k} for training; both need at least one")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val_idx, train_idx = order[:k].sort().values, order[k:].sort().values
    return train.subset(train_idx), train.subset(val_idx)


def num_classes(splits: Splits, train: Source) -> int:
    classes = splits.classes if splits.classes is not None else getattr(splits.train, "classes", None)
    if isinstance(classes, int):
        return classes
    if classes is not None:
        return len(classes)
    labels = train.labels()
    if len(labels) == 0:
        raise HpplugError("the training split has no samples")
    if int(labels.min()) < 0:
        raise HpplugError(f"labels must be class indices >= 0, found {int(labels.min())}")
    return int(labels.max()) + 1


def prepare(splits: Splits, *, loader: str, workers: int, val_fraction: float, device: torch.device) -> RunData:
    """The run's sources: train, validation (the data set's own, held out, or none), test."""
    if not isinstance(splits, Splits):
        raise HpplugError(f"a data set must provide hpplug.Splits (or a (train, test) pair), got {type(splits).__name__}")
    if loader == "stream" and isinstance(splits.train, TensorSplit):
        splits = Splits(_RawTensorItems(splits.train), _raw(splits.test), _raw(splits.val), splits.classes)
    train = source("train", splits.train, loader, workers, device)
    val_origin = None
    val = None
    if splits.val is not None:
        val, val_origin = source("val", splits.val, loader, workers, device), "dataset"
    elif val_fraction > 0:
        train, val = hold_out(train, val_fraction)
        val_origin = "held-out"
    test = source("test", splits.test, loader, workers, device) if splits.test is not None else None
    for other in (val, test):
        if other is not None and other.input_shape != train.input_shape:
            raise HpplugError(f"the {other.name} inputs are {list(other.input_shape)} but the training inputs are "
                              f"{list(train.input_shape)}; every split must have the same input shape")
    data = RunData(train, val, test, num_classes(splits, train), val_origin)
    if isinstance(train, InMemory):
        place = device if _fits_on(device, train, val, test) else torch.device("cpu")
        data.train = train.to(place)
        data.val = val.to(place) if isinstance(val, InMemory) else val
        data.test = test.to(place) if isinstance(test, InMemory) else test
    return data


def _raw(split: Dataset | None) -> Dataset | None:
    return _RawTensorItems(split) if isinstance(split, TensorSplit) else split


def _fits_on(device: torch.device, *sources: Source | None) -> bool:
    """On a GPU, hold the data there when it fits in half its free memory."""
    if device.type != "cuda":
        return True
    size = sum(s.nbytes for s in sources if isinstance(s, InMemory))
    return size < _available_bytes(device) // 2

