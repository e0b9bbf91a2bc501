"""ema: the average a hand computation gives, evaluated instead of the trained weights, kept at
the end, resumed exactly; hostile checkpoint state refused in one line."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hpplug
from hpplug import HpplugError, Plugin, Progress, RunConfig, TensorSplit, hookimpl
from hpplug_methods.ema import EMA


def resume_tests() -> Any:
    """tests/test_resume.py, whose crash_and_resume and assert_same_run define an exact resume
    (importable when pytest runs from the repository's root, as `python -m pytest` does)."""
    return importlib.import_module("tests.test_resume")


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


class Recorder(Plugin):
    """The trained weights after every update and the model's weights at the end of training."""

    updates: list[dict[str, torch.Tensor]] = []
    final: dict[str, torch.Tensor] = {}

    @hookimpl
    def hpplug_after_optimizer_step(self, model: nn.Module, progress: Progress) -> None:
        Recorder.updates.append(snapshot(model))

    @hookimpl
    def hpplug_train_end(self, model: nn.Module, progress: Progress, train_inputs: Any) -> None:
        Recorder.final = snapshot(model)


@pytest.fixture
def recorder(hpplug_register: Any) -> type[Recorder]:
    hpplug_register("ema", EMA)
    hpplug_register("recorder", Recorder)
    Recorder.updates, Recorder.final = [], {}
    return Recorder


@pytest.mark.parametrize("warmup", [False, True])
def test_the_model_ends_with_the_hand_computed_average_of_every_update(recorder, hpplug_train, warmup):
    decay = 0.9
    result = hpplug_train(["ema", "recorder"], params={"ema": {"decay": decay, "warmup": warmup}},
                          mixed_precision="bf16" if warmup else "no")
    assert result.status == "finished" and len(recorder.updates) == 21
    average = recorder.updates[0]
    for n, weights in enumerate(recorder.updates[1:], start=1):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        average = {k: d * average[k] + (1 - d) * weights[k] for k in average}
    last = recorder.updates[-1]
    for k, v in recorder.final.items():
        torch.testing.assert_close(v, average[k], rtol=0, atol=1e-6)
        assert (v - last[k]).abs().max() > 1e-3, "the average is not the last trained weights"


def digits(part: slice) -> TensorSplit:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16
    return TensorSplit(x[part], torch.tensor(bunch.target)[part])


def bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


class EvalSpy(Plugin):
    """Before ``ema``: sees the trained weights when an evaluation starts, the evaluated ones
    (and their metrics) when it ends, and the weights training goes on from."""

    seen: list[dict[str, Any]] = []

    @hookimpl
    def hpplug_evaluation_start(self, model: nn.Module, split: str, progress: Progress) -> None:
        EvalSpy.seen.append({"split": split, "trained": snapshot(model)})

    @hookimpl
    def hpplug_evaluation_end(self, metrics: Any, model: nn.Module, split: str, progress: Progress) -> None:
        EvalSpy.seen[-1].update(evaluated=snapshot(model), metrics=dict(metrics))

    @hookimpl
    def hpplug_epoch_start(self, progress: Progress) -> None:
        EvalSpy.seen.append({"epoch_start": progress.epoch})

    @hookimpl
    def hpplug_after_optimizer_step(self, model: nn.Module, progress: Progress) -> None:
        if "resumed_from" not in EvalSpy.seen[-1]:
            EvalSpy.seen[-1]["resumed_from"] = snapshot(model)  # after the epoch's first update


def evaluate(net: nn.Module, weights: dict[str, torch.Tensor], split: TensorSplit) -> tuple[float, float]:
    net = copy.deepcopy(net)
    net.load_state_dict(weights)
    net.eval()
    with torch.no_grad():
        logits = net(split.x)
    return F.cross_entropy(logits, split.y).item(), (logits.argmax(1) == split.y).float().mean().item()


def test_validation_and_test_evaluate_the_average_and_training_goes_on_from_its_own_weights(
        hpplug_register, tmp_path):
    hpplug_register("ema", EMA)
    hpplug_register("eval-spy", EvalSpy)
    EvalSpy.seen = []
    net, val = bn_net(), digits(slice(1400, 1600))
    result = hpplug.train(model=net, train=digits(slice(0, 1400)), val=val, test=digits(slice(1600, None)),
                          plugins=["eval-spy", "ema"], params={"ema": {"decay": 0.98, "warmup": False}}, epochs=2,
                          lr=0.3, wandb_mode="disabled", output_dir=str(tmp_path))
    first_val, epoch_1, last_val, test = EvalSpy.seen[1:5]
    assert [first_val["split"], last_val["split"], test["split"]] == ["val", "val", "test"]
    for seen in (first_val, last_val):
        loss, accuracy = evaluate(net, seen["evaluated"], val)
        assert seen["metrics"]["val/loss"] == pytest.approx(loss, rel=1e-5)
        assert seen["metrics"]["val/accuracy"] == pytest.approx(accuracy)
        trained_loss, _ = evaluate(net, seen["trained"], val)
        assert abs(trained_loss - loss) > 0.1, "the average is far from the trained weights at this decay"
    # Training goes on from the trained weights, one SGD step away from them, not from the average.
    def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        return sum(float((a[k] - b[k]).norm()) for k in ("1.weight", "4.weight"))

    step = distance(epoch_1["resumed_from"], first_val["trained"])
    assert 0 < step < distance(epoch_1["resumed_from"], first_val["evaluated"]) / 3
    # The test and the model left behind are the average the last validation evaluated.
    final = snapshot(net)
    assert all(torch.equal(final[k], v) for k, v in last_val["evaluated"].items())
    assert all(torch.equal(test["trained"][k], v) for k, v in final.items())
    assert result.summary["test/loss"] == pytest.approx(evaluate(net, final, digits(slice(1600, None)))[0], rel=1e-5)


def test_a_crash_and_resume_ends_exactly_like_the_uninterrupted_run(hpplug_register, hpplug_train, tmp_path):
    resume = resume_tests()
    hpplug_register("ema", EMA)
    hpplug_register("crash-at", resume.CrashAt)
    options = dict(epochs=2, log_every=4, checkpoint_every="10", plugins=["crash-at", "ema"],
                   params={"ema": {"decay": 0.95}})
    baseline, cut = resume.crash_and_resume(hpplug_train, tmp_path, options)
    resume.assert_same_run(cut, baseline)


# --- hostile input ------------------------------------------------------------------------


def test_a_decay_outside_0_to_1_is_refused(hpplug_register, hpplug_train):
    hpplug_register("ema", EMA)
    with pytest.raises(HpplugError, match="between 0.0 and 1.0"):
        hpplug_train(["ema"], params={"ema": {"decay": 1.5}})


@pytest.mark.parametrize("state", [
    [1, 2],
    {"average": "weights"},
    {"average": {"0.weight": torch.zeros(2)}},  # no update count
    {"average": {"n_averaged": torch.tensor(1.5)}},
    {"average": {"n_averaged": torch.tensor(-1)}},
    {"average": {"n_averaged": torch.tensor(1), "0.weight": [0.0, 1.0]}},
])
def test_checkpoint_state_that_is_not_an_average_is_refused(state):
    with pytest.raises(ValueError, match="it is not"):
        EMA().load_state_dict(state)


def test_an_average_of_another_model_is_refused_in_one_line_at_resume():
    saved = EMA()
    saved.hpplug_train_start(nn.Linear(4, 3), Progress(0, 0, 10, 1), RunConfig())
    resumed = EMA()
    resumed.load_state_dict(saved.state_dict())
    with pytest.raises(HpplugError, match=r"^plugin ema: the weight average in the checkpoint does not fit") as err:
        resumed.hpplug_train_start(nn.Linear(4, 5), Progress(0, 0, 10, 1), RunConfig())
    assert "\n" not in str(err.value)
