"""cifar10 on CIFAR-format batch files the tests write: the real format read, crafted pickles refused."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.datasets.cifar

from hpplug import TensorSplit
from hpplug_datasets.cifar10 import CIFAR10, FOLDER, META, TEST, TRAIN

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SIZES = {name: 7 for name in TRAIN} | {"test_batch": 5}


class Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 strings (BINSTRING), as the real files (cPickle, protocol 2) hold them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string


def py2(obj: Any) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def batch(name: str, seed: int) -> dict[bytes, Any]:
    rng = np.random.default_rng(seed)
    n = SIZES[name]
    return {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}


# How each file is pickled: like the real files (Python 2), or by Python 3 with bytes or str keys.
WRITERS: dict[str, Callable[[dict[bytes, Any]], bytes]] = {
    "py2": py2,
    "protocol2": lambda d: pickle.dumps(d, protocol=2),
    "protocol4": lambda d: pickle.dumps(d, protocol=4),
    "protocol5": lambda d: pickle.dumps(d, protocol=5),
    "str-keys": lambda d: pickle.dumps({k.decode(): v for k, v in d.items()}),
}


def write_cifar(root: Path, writers: list[str]) -> dict[str, dict[bytes, Any]]:
    """The six batches and batches.meta in ``root/cifar-10-batches-py``; returns what was written."""
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = {name: batch(name, seed) for seed, name in enumerate(TRAIN + TEST)}
    for i, (name, content) in enumerate(written.items()):
        (folder / name).write_bytes(WRITERS[writers[i % len(writers)]](content))
    (folder / META).write_bytes(py2({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}))
    return written


def expected(written: dict[str, dict[bytes, Any]], names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.concatenate([written[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
    y = np.concatenate([written[n][b"labels"] for n in names])
    return torch.from_numpy(x), torch.from_numpy(y).long()


@pytest.mark.parametrize("writers", [["py2"], list(WRITERS)])
def test_cifar_batches_load_as_uint8_images_with_their_labels(tmp_path: Path, writers: list[str]) -> None:
    written = write_cifar(tmp_path, writers)
    splits = CIFAR10().load(tmp_path, download=False)
    for split, names in ((splits.train, TRAIN), (splits.test, TEST)):
        x, y = expected(written, names)
        assert isinstance(split, TensorSplit) and split.scale == 255.0 and split.x.dtype == torch.uint8
        assert torch.equal(split.x, x) and torch.equal(split.y, y)
    assert splits.train.x.shape == (35, 3, 32, 32) and splits.classes == NAMES and splits.val is None


def test_equal_to_what_torchvisions_reader_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's reader (it unpickles: fine on files this test wrote) accepts only the real
    files' checksums: lifted for the comparison."""
    write_cifar(tmp_path, ["py2"])
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    splits = CIFAR10().load(tmp_path, download=False)
    for split, train in ((splits.train, True), (splits.test, False)):
        theirs = torchvision.datasets.CIFAR10(str(tmp_path), train=train, download=False)
        assert torch.equal(split.x, torch.as_tensor(theirs.data).permute(0, 3, 1, 2))
        assert torch.equal(split.y, torch.as_tensor(theirs.targets))
    assert len(splits.classes) == 10 and splits.train.scale == 255.0


class Payload:
    """Unpickling this calls ``call(*args)``: how a crafted pickle runs code."""

    def __init__(self, call: Callable[..., Any], *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call, self.args


PAYLOADS = {
    "open": lambda marker: Payload(open, str(marker), "w"),
    "os.system": lambda marker: Payload(os.system, f"touch {marker}"),
    "exec": lambda marker: Payload(exec, f"open({str(marker)!r}, 'w')"),
}


def test_the_crafted_pickles_do_run_code_under_pickle_load(tmp_path: Path) -> None:
    for make in PAYLOADS.values():
        marker = tmp_path / "ran"
        pickle.loads(pickle.dumps(make(marker)))
        assert marker.exists(), "the payload is real"
        marker.unlink()


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize(("file", "where"), [("data_batch_3", "whole"), ("test_batch", "labels"),
                                             (META, "label_names"), ("data_batch_1", "data")])
def test_a_crafted_pickle_is_refused_before_it_runs(tmp_path: Path, payload: str, file: str, where: str,
                                                    refused) -> None:
    write_cifar(tmp_path, ["protocol4"])
    marker = tmp_path / "ran"
    evil = PAYLOADS[payload](marker)
    path = tmp_path / FOLDER / file
    content = evil if where == "whole" else {b"labels": [0], b"label_names": [b"a"]} | {where.encode(): evil}
    path.write_bytes(pickle.dumps(content, protocol=2 if file == META else 4))
    line = refused(CIFAR10().load, tmp_path, False)
    assert line.startswith(f"{path} is not a CIFAR-10 batch: it asks to call ") and "was not unpickled" in line
    assert not marker.exists()


GOOD = batch("data_batch_2", 1)
DAMAGED = {  # data_batch_2's content -> what the error says
    "garbage": (b"not a pickle at all", "cannot be read as a CIFAR-10 pickle"),
    "empty": (b"", "cannot be read as a CIFAR-10 pickle (EOFError"),
    "truncated": (py2(GOOD)[:5000], "cannot be read as a CIFAR-10 pickle"),
    "a list": (pickle.dumps([1, 2]), "holds a list, not the dict"),
    "float data": (pickle.dumps(GOOD | {b"data": GOOD[b"data"].astype(np.float32)}),
                   "'data' must be a uint8 array [N, 3072] (32x32 RGB images, channels first), found a float32"),
    "28x28 data": (pickle.dumps(GOOD | {b"data": GOOD[b"data"][:, :784]}), "found a uint8 array of shape [7, 784]"),
    "no data": (pickle.dumps({b"labels": GOOD[b"labels"]}), "channels first), found none;"),
    "text data": (pickle.dumps(GOOD | {b"data": "pixels"}), "channels first), found a str;"),
    "short labels": (pickle.dumps(GOOD | {b"labels": GOOD[b"labels"][:-1]}), "'labels' must be a list of 7 integers"),
    "text labels": (pickle.dumps(GOOD | {b"labels": ["cat"] * 7}), "'labels' must be a list of 7 integers"),
    "ragged labels": (pickle.dumps(GOOD | {b"labels": [[1], [2, 3]] + [1] * 5}), "'labels' must be a list"),
    "label 10": (pickle.dumps(GOOD | {b"labels": [0] * 6 + [10]}),
                 "labels must lie in 0..9 (one per name in batches.meta), found 0..10"),
    "other codec": (b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.",
                    "it asks to call _codecs.encode with encoding 'rot13'"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_batch_is_named_in_one_line(tmp_path: Path, case: str, refused) -> None:
    write_cifar(tmp_path, ["protocol4"])
    content, says = DAMAGED[case]
    path = tmp_path / FOLDER / "data_batch_2"
    path.write_bytes(content)
    line = refused(CIFAR10().load, tmp_path, False)
    assert line.startswith(str(path)) and says in line, line
    assert line.endswith("replace it with the file from cifar-10-python.tar.gz")


@pytest.mark.parametrize("meta", [{b"num_vis": 3072}, {b"label_names": []}, {b"label_names": [1, 2]}])
def test_a_damaged_meta_file_is_named(tmp_path: Path, meta: dict, refused) -> None:
    write_cifar(tmp_path, ["protocol4"])
    (tmp_path / FOLDER / META).write_bytes(pickle.dumps(meta))
    assert f"{tmp_path / FOLDER / META}: 'label_names' must be a non-empty list" in refused(CIFAR10().load, tmp_path,
                                                                                             False)


def test_missing_files_offline_say_where_to_put_which(tmp_path: Path, refused) -> None:
    line = refused(CIFAR10().load, tmp_path, True)  # download=True, but HPPLUG_OFFLINE=1
    assert line == (f"cifar10 is not in {tmp_path / FOLDER} and downloads are off (missing: data_batch_1, "
                    "data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta); put "
                    f"cifar-10-python.tar.gz (or the {FOLDER} folder unpacked from it) in {tmp_path}, or run once "
                    "with network access")
    assert list(tmp_path.iterdir()) == [], "nothing was fetched or created"
    write_cifar(tmp_path, ["protocol4"])
    (tmp_path / FOLDER / "data_batch_4").unlink()
    assert "(missing: data_batch_4);" in refused(CIFAR10().load, tmp_path, False)


def archive(source: Path, to: Path) -> str:
    with tarfile.open(to, "w:gz") as tar:
        tar.add(source / FOLDER, arcname=FOLDER)
    return hashlib.md5(to.read_bytes()).hexdigest()


def test_the_genuine_archive_is_unpacked_offline_and_another_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     refused) -> None:
    """The archive's checksum decides; the test stands in its own archive's checksum for the real one's."""
    written = write_cifar(tmp_path / "made", ["py2"])
    root = tmp_path / "root"
    root.mkdir()
    md5 = archive(tmp_path / "made", root / "cifar-10-python.tar.gz")
    assert "downloads are off" in refused(CIFAR10().load, root, True)
    assert not (root / FOLDER).exists(), "an archive that is not the genuine one is never unpacked"
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "tgz_md5", md5)
    splits = CIFAR10().load(root, download=False)
    assert torch.equal(splits.test.x, expected(written, TEST)[0]) and splits.classes == NAMES
