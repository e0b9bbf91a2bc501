"""``hpplug.train``: the engine from Python, on the caller's own model and data sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import hpplug


def blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(centers[y] + torch.randn(n, 2, generator=g), y)


def test_train_an_nn_module_on_data_sets_with_plugins(tmp_path):
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    before = [p.detach().clone() for p in net.parameters()]
    result = hpplug.train(model=net, train=blobs(300, 0), test=blobs(90, 1), plugins=["cosine"],
                          params={"cosine": {"t_max": 4}}, epochs=4, batch_size=32,
                          wandb_mode="disabled", output_dir=str(tmp_path))
    assert result.status == "finished"
    assert result.summary["test/accuracy"] > 0.9 and result.summary["test/samples"] == 90
    assert result.summary["val/samples"] == 30  # 10% of 300 held out
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters())), "the caller's module is trained"
    config = json.loads((Path(result.record_dir) / "config.json").read_text())
    assert config["plugins"] == ["cosine"] and config["cosine.t_max"] == 4
    assert config["model"] == "python:Sequential"


def test_train_a_model_factory_on_a_built_in_data_set(tmp_path):
    def factory(num_classes, input_shape):
        return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_classes))

    result = hpplug.train(model=factory, dataset="digits", epochs=1, val_fraction=0,
                          wandb_mode="disabled", output_dir=str(tmp_path))
    assert result.status == "finished" and "val/accuracy" not in result.summary
    assert result.summary["test/samples"] == 360


def test_bad_values_raise_the_command_lines_error(tmp_path):
    with pytest.raises(hpplug.HpplugError, match="--epochs"):
        hpplug.train(model="mlp", epochs=0, wandb_mode="disabled", output_dir=str(tmp_path))
    with pytest.raises(hpplug.HpplugError, match="unknown plugin 'cosin'"):
        hpplug.train(plugins=["cosin"], wandb_mode="disabled", output_dir=str(tmp_path))
