"""A built-in data-set plugin end to end: MNIST-format files the test writes, trained by name."""

import json

import pytest
from hpplug.idx import synthetic_digits, write_mnist


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train_x, train_y = synthetic_digits(600, seed=1)
    test_x, test_y = synthetic_digits(200, seed=2, split="test")
    for folder in ("MNIST", "FashionMNIST"):
        write_mnist(root, train_x, train_y, test_x, test_y, folder=folder)
    return root, (train_x, train_y, test_x, test_y)


def test_hpplug_run_trains_on_mnist_files_with_the_input_size_of_the_data(mnist_root, hpplug_cli, tmp_path):
    root, _ = mnist_root
    code, out, err = hpplug_cli("run", "--dataset", "mnist", "--data-root", str(root), "--epochs", "4", "--momentum", "0.9",
                                "--plugin", "normalize", "--wandb-mode", "disabled", "--output-dir", str(tmp_path))
    assert code == 0, err
    (record,) = tmp_path.iterdir()
    summary = json.loads((record / "summary.json").read_text())
    assert summary["test/accuracy"] > 0.3, "synthetic digits are learnable"
    assert summary["updates"] == 4 * 9  # ceil(540 / 64) per epoch: 60 of 600 held out for validation
    assert (summary["val/samples"], summary["test/samples"]) == (60, 200)
