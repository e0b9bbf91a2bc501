"""Datasets read through torchvision's real classes from MNIST-format files the test writes."""

import json

import pytest
import torch

from hpplug import data
from hpplug.idx import synthetic_digits, write_mnist


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train_x, train_y = synthetic_digits(600, seed=1)
    test_x, test_y = synthetic_digits(200, seed=2, split="test")
    for folder in ("MNIST", "FashionMNIST"):
        write_mnist(root, train_x, train_y, test_x, test_y, folder=folder)
    return root, (train_x, train_y, test_x, test_y)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_torchvision_datasets_load_as_uint8_tensors(mnist_root, name):
    root, (train_x, train_y, test_x, test_y) = mnist_root
    ds = data.load(name, root, download=False)
    assert ds.input_shape == (1, 28, 28) and ds.train_x.dtype == torch.uint8
    assert torch.equal(ds.train_x[:, 0], torch.as_tensor(train_x)) and torch.equal(ds.test_y, torch.as_tensor(test_y))
    assert ds.images(ds.train_x[:2]).max() <= 1.0


def test_hpplug_run_trains_on_mnist_files_with_the_input_size_of_the_data(mnist_root, hpplug_cli, tmp_path):
    root, _ = mnist_root
    code, out, err = hpplug_cli("run", "--dataset", "mnist", "--data-root", str(root), "--epochs", "4", "--momentum", "0.9",
                                "--plugin", "normalize", "--wandb-mode", "disabled", "--output-dir", str(tmp_path))
    assert code == 0, err
    (record,) = tmp_path.iterdir()
    summary = json.loads((record / "summary.json").read_text())
    assert summary["test/accuracy"] > 0.3, "synthetic digits are learnable"
    assert summary["updates"] == 4 * 10  # ceil(600 / 64) per epoch


def test_digits_is_bundled_and_split_the_same_way_every_time():
    a, b = data.load("digits", "unused"), data.load("digits", "unused")
    assert a.input_shape == (1, 8, 8) and len(a.train_y) == 1437 and len(a.test_y) == 360
    assert torch.equal(a.train_x, b.train_x) and a.scale == 16.0
