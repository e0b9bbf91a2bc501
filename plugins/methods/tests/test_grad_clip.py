"""grad-clip: the gradients stepped on have a norm of at most max_norm, and the logged norm is
the true one before clipping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpplug import HpplugError, Plugin, hookimpl
from hpplug.testing import read_metrics
from hpplug_methods.grad_clip import GradClip

TINY = {"mlp": {"hidden": 32}}
MAX_NORM = 0.5  # between the smallest and the largest gradient norm of a digits epoch at lr 0.5


def grad_norm(model: nn.Module) -> float:
    """The global 2-norm of the gradients, by hand."""
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))


class Before(Plugin):
    """The norm of each update's gradients before anything changes them."""

    norms: list[float] = []

    @hookimpl(tryfirst=True)
    def hpplug_before_optimizer_step(self, model: nn.Module) -> None:
        Before.norms.append(grad_norm(model))


class After(Plugin):
    """The norm of the gradients the optimizer steps on (after every plugin's change)."""

    norms: list[float] = []

    @hookimpl(trylast=True)
    def hpplug_before_optimizer_step(self, model: nn.Module) -> None:
        After.norms.append(grad_norm(model))


@pytest.fixture
def probes(hpplug_register):
    hpplug_register("grad-clip", GradClip)
    hpplug_register("before", Before)
    hpplug_register("after", After)
    Before.norms, After.norms = [], []
    return ["before", "grad-clip", "after"]


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_the_norm_stepped_on_is_at_most_max_norm_and_the_logged_norm_is_the_true_one(precision, probes,
                                                                                       hpplug_train):
    result = hpplug_train(probes, params={**TINY, "grad-clip": {"max_norm": MAX_NORM}}, lr=0.5, log_every=4,
                          mixed_precision=precision)
    assert result.status == "finished"
    before, after = Before.norms, After.norms
    assert len(before) == len(after) == result.summary["updates"]
    clipped = [b > MAX_NORM for b in before]
    assert 0 < sum(clipped) < len(clipped), f"max_norm {MAX_NORM} clips some updates, not all: {before}"
    for b, a, c in zip(before, after, clipped):
        assert a == pytest.approx(MAX_NORM if c else b, rel=1e-5)
    logged = {row["step"]: row for row in read_metrics(result) if "grad-clip/norm" in row}
    assert sorted(logged) == list(range(4, len(before) + 1, 4))
    for step, row in logged.items():
        window = before[step - 4:step]
        assert row["grad-clip/norm"] == pytest.approx(sum(window) / 4, rel=1e-5)
        assert row["grad-clip/clipped"] == sum(b > MAX_NORM for b in window) / 4


def test_a_large_max_norm_changes_nothing(probes, hpplug_train, tmp_path):
    runs = [hpplug_train(plugins, params={**TINY, **params}, lr=0.5, log_every=4,
                         output_dir=str(tmp_path / str(len(plugins))))
            for plugins, params in ((["before"], {}), (["before", "grad-clip"], {"grad-clip": {"max_norm": 1e6}}))]
    plain, clipped = ([{k: v for k, v in row.items() if not k.startswith("grad-clip/") and k != "time"
                        and k != "train/samples_per_s"} for row in read_metrics(r)] for r in runs)
    assert clipped == plain
    assert any("grad-clip/norm" in row for row in read_metrics(runs[1]))


def test_a_crash_and_resume_logs_what_the_uninterrupted_run_logs(hpplug_register, hpplug_train, tmp_path):
    """The norms since the last log are checkpointed: the log of update 35 averages the norms
    of updates 29 to 35, and the checkpoint of update 30 is where the resumed run starts. (The
    crashed run never logged update 35: a row it had logged would be kept, not written again.)"""
    from tests.test_resume import CrashAt, assert_same_run, crash_and_resume

    hpplug_register("grad-clip", GradClip)
    hpplug_register("crash-at", CrashAt)
    options = dict(epochs=2, log_every=7, checkpoint_every="10", plugins=["crash-at", "grad-clip"], lr=0.5,
                   params={**TINY, "grad-clip": {"max_norm": MAX_NORM}})
    baseline, cut = crash_and_resume(hpplug_train, tmp_path, options)
    assert_same_run(cut, baseline)


def test_max_norm_must_be_positive(hpplug_register, hpplug_cli, tmp_path):
    hpplug_register("grad-clip", GradClip)
    code, out, err = hpplug_cli("run", "--plugin", "grad-clip", "--grad-clip.max_norm", "0", "--wandb-mode",
                                "disabled", "--output-dir", str(tmp_path), "--data-root", str(tmp_path / "data"))
    assert (code, err.splitlines()) == (2, ["Error: --grad-clip.max_norm must be > 0 (a norm to clip to), got 0.0"])
    with pytest.raises(HpplugError):
        GradClip(max_norm=0.0)


@pytest.mark.parametrize("state", [None, {}, {"window": [1.0, 2.0]}, {"window": ["1", 0, 0]},
                                   {"window": [True, 0, 0]}, [1.0, 0.0, 0.0]])
def test_a_damaged_state_is_refused(state):
    with pytest.raises(ValueError, match="grad-clip's window"):
        GradClip().load_state_dict(state)
    restored = GradClip()
    restored.load_state_dict(GradClip().state_dict())
    assert torch.equal(restored.window, torch.zeros(3, dtype=torch.float64))


def test_an_overflowed_gradient_is_left_out_of_the_logged_norm():
    """Under fp16 the scaler skips a step whose gradient overflowed: it is no norm to report."""
    model = nn.Linear(2, 1, bias=False)
    clip = GradClip(max_norm=1.0)
    for grad in ([3.0, 4.0], [float("inf"), 0.0], [0.3, 0.4]):
        model.weight.grad = torch.tensor([grad])
        clip.hpplug_before_optimizer_step(model)
    assert clip.hpplug_update_metrics(None) == {"grad-clip/norm": pytest.approx(2.75), "grad-clip/clipped": 0.5}
    assert clip.hpplug_update_metrics(None) is None  # nothing since the last log
