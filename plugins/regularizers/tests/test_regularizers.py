"""dropout, weight-decay and label-smoothing on hpplug-shaped models and torch references."""

from __future__ import annotations

from collections import OrderedDict
from importlib import metadata

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpplug import HpplugError
from hpplug.config import RunConfig
from hpplug_regularizers.dropout import Dropout
from hpplug_regularizers.label_smoothing import LabelSmoothing
from hpplug_regularizers.weight_decay import WeightDecay


def mlp() -> nn.Sequential:
    """hpplug's mlp: Flatten, Linear, ReLU, Linear."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10))


def cnn() -> nn.Sequential:
    """hpplug's cnn: two conv blocks, then Flatten, Linear, ReLU, Linear."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def layer_types(model: nn.Module) -> list[type[nn.Module]]:
    return [type(m) for m in model.children()]


# --- dropout ----------------------------------------------------------------------------


def test_dropout_builds_the_article_mlp_in_place() -> None:
    model = mlp()
    fc1, fc2 = model[1], model[3]
    Dropout(p=0.5).hpplug_adjust_model(model, RunConfig())
    assert layer_types(model) == [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert model[3].p == 0.5
    assert model[1] is fc1 and model[4] is fc2  # same layers, same object, renumbered
    assert [name for name, _ in model.named_children()] == ["0", "1", "2", "3", "4"]
    assert set(model.state_dict()) == {"1.weight", "1.bias", "4.weight", "4.bias"}


def test_dropout_goes_before_the_cnn_classifier_only() -> None:
    model = cnn()
    Dropout(p=0.25).hpplug_adjust_model(model, RunConfig(model="cnn"))
    types = layer_types(model)
    assert types.count(nn.Dropout) == 1
    assert types[-5:] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_dropout_after_every_hidden_linear_and_keeps_custom_names() -> None:
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(4, 8), act1=nn.GELU(), fc2=nn.Linear(8, 8), fc3=nn.Linear(8, 2)
        )
    )
    Dropout(p=0.1).hpplug_adjust_model(model, RunConfig())
    assert [name for name, _ in model.named_children()] == ["fc1", "act1", "dropout", "fc2", "dropout1", "fc3"]


def test_dropout_is_active_in_train_and_identity_in_eval() -> None:
    torch.manual_seed(0)
    model = mlp()
    Dropout(p=0.5).hpplug_adjust_model(model, RunConfig())
    x = torch.rand(256, 1, 28, 28)
    hidden = nn.Sequential(*list(model.children())[:4])  # up to and including the dropout
    model.train()
    dropped = hidden(x)
    relu_out = nn.Sequential(*list(model.children())[:3])(x)
    zero_frac = ((dropped == 0) & (relu_out > 0)).sum() / (relu_out > 0).sum()
    assert 0.45 < zero_frac.item() < 0.55  # about p of the active units are dropped
    kept = dropped[dropped != 0]
    assert torch.allclose(kept, 2 * relu_out[dropped != 0])  # survivors scaled by 1/(1-p)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(hidden(x), relu_out)
    assert torch.equal(model(x), model(x))


def test_dropout_rejects_a_model_that_is_not_sequential() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    with pytest.raises(HpplugError, match="nn.Sequential, got Net"):
        Dropout().hpplug_adjust_model(Net(), RunConfig())


def test_dropout_rejects_a_sequential_without_hidden_linear() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(HpplugError, match="no hidden Linear"):
        Dropout().hpplug_adjust_model(model, RunConfig())
    assert layer_types(model) == [nn.Flatten, nn.Linear]  # left untouched


# --- weight-decay -----------------------------------------------------------------------


def test_weight_decay_spares_biases_and_norm_parameters() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    groups = WeightDecay(weight_decay=1e-3).hpplug_param_groups(model, RunConfig())
    conv, bn, fc = model[0], model[1], model[3]
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]
    assert {id(p) for p in groups[0]["params"]} == {id(conv.weight), id(fc.weight)}
    assert {id(p) for p in groups[1]["params"]} == {id(conv.bias), id(bn.weight), id(bn.bias), id(fc.bias)}
    torch.optim.SGD(groups, lr=0.1)  # a valid optimizer spec


def test_weight_decay_can_decay_everything() -> None:
    model = mlp()
    groups = WeightDecay(weight_decay=5e-4, exclude_norm_and_bias=False).hpplug_param_groups(model, RunConfig())
    assert len(groups) == 1 and groups[0]["weight_decay"] == 5e-4
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_weight_decay_drops_empty_groups() -> None:
    model = nn.Linear(3, 2, bias=False)
    groups = WeightDecay().hpplug_param_groups(model, RunConfig())
    assert len(groups) == 1 and groups[0]["weight_decay"] == 5e-4


def test_weight_decay_groups_decay_only_the_weights_in_an_optimizer_step() -> None:
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in (model.weight, model.bias)]
    opt = torch.optim.SGD(WeightDecay(weight_decay=0.5).hpplug_param_groups(model, RunConfig()), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model.weight, before[0] * (1 - 0.1 * 0.5))
    assert torch.equal(model.bias, before[1])


# --- label-smoothing --------------------------------------------------------------------


def test_label_smoothing_matches_the_reference_formula_per_sample() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(16, 10), torch.randint(0, 10, (16,))
    eps = 0.1
    loss = LabelSmoothing(smoothing=eps).hpplug_loss(logits, targets)
    soft = torch.full((16, 10), eps / 10).scatter_(1, targets[:, None], 1 - eps + eps / 10)
    reference = -(soft * F.log_softmax(logits, dim=1)).sum(dim=1)
    assert loss.shape == (16,)
    assert torch.allclose(loss, reference, atol=1e-6)
    assert torch.allclose(loss, nn.CrossEntropyLoss(label_smoothing=eps, reduction="none")(logits, targets))
    assert not torch.allclose(loss, F.cross_entropy(logits, targets, reduction="none"))


def test_label_smoothing_zero_is_plain_cross_entropy() -> None:
    logits, targets = torch.randn(8, 5), torch.randint(0, 5, (8,))
    loss = LabelSmoothing(smoothing=0.0).hpplug_loss(logits, targets)
    assert torch.allclose(loss, F.cross_entropy(logits, targets, reduction="none"))


# --- packaging --------------------------------------------------------------------------


def test_entry_points_and_slots() -> None:
    eps = {e.name: e for e in metadata.entry_points(group="hpplug") if e.dist and e.dist.name == "hpplug-regularizers"}
    assert {n: e.load() for n, e in eps.items()} == {
        "dropout": Dropout,
        "weight-decay": WeightDecay,
        "label-smoothing": LabelSmoothing,
    }
    assert (WeightDecay.slot, LabelSmoothing.slot, Dropout.slot) == ("param-groups", "loss", None)
    assert {c.kind for c in (Dropout, WeightDecay, LabelSmoothing)} == {"regularizer"}
    with pytest.raises(ValueError):
        Dropout.params["p"].parse("1.0")
