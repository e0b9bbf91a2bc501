"""swa: the mean of the epoch-end weights from ``start``, SWALR's LR to the float, batch norm
recomputed over the training inputs, resumed exactly mid-SWA; hostile state refused."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.optim.swa_utils import SWALR

import hpplug
from hpplug import HpplugError, Plugin, Progress, hookimpl
from hpplug.testing import read_metrics
from hpplug_methods.ema import EMA
from hpplug_methods.swa import SWA

sys.path.insert(0, str(Path(__file__).parent))
from test_ema import bn_net, resume_tests, snapshot  # noqa: E402  this folder's shared helpers

U = 6  # updates per epoch of digits (1,293 training samples) at batch size 256


class EpochSpy(Plugin):
    """Before ``swa``: the trained weights at each epoch's end, and what each validation evaluates."""

    ends: list[dict[str, torch.Tensor]] = []
    evaluated: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def hpplug_after_optimizer_step(self, model: nn.Module, progress: Progress) -> None:
        if progress.update % progress.updates_per_epoch == 0:
            EpochSpy.ends.append(snapshot(model))

    @hookimpl
    def hpplug_evaluation_end(self, metrics: Any, model: nn.Module, split: str, progress: Progress) -> None:
        if split == "val":
            EpochSpy.evaluated.append(snapshot(model))


@pytest.mark.parametrize("start, epochs, first", [
    (0.75, 4, 3), (0.5, 4, 2), (0.7, 10, 7), (0.75, 2, 1), (0.0, 3, 0), (1.0, 5, 4), (0.3, 1, 0),
])
def test_swa_begins_at_the_first_epoch_boundary_at_or_after_start(start, epochs, first):
    assert SWA(start=start).first_epoch(Progress(0, 0, U, epochs)) == first


def test_the_model_ends_with_the_mean_of_the_epoch_end_weights_from_start(hpplug_register, hpplug_train):
    hpplug_register("swa", SWA)
    hpplug_register("epoch-spy", EpochSpy)
    EpochSpy.ends, EpochSpy.evaluated = [], []
    result = hpplug_train(["epoch-spy", "swa"], params={"swa": {"start": 0.5}}, epochs=4, batch_size=256,
                          checkpoint_every="1000")
    ends, evaluated = EpochSpy.ends, EpochSpy.evaluated
    assert result.status == "finished" and len(ends) == len(evaluated) == 4
    mean = {k: (ends[2][k] + ends[3][k]) / 2 for k in ends[2]}
    final = load_file(Path(result.record_dir) / "checkpoint" / "model.safetensors")
    for k, v in final.items():
        torch.testing.assert_close(v, mean[k], rtol=0, atol=1e-6)
        assert (v - ends[3][k]).abs().max() > 1e-3
    # Validation evaluates the trained weights before the SWA phase and the average in it.
    for i in (0, 1, 2):
        assert all(torch.equal(evaluated[i][k], ends[i][k]) for k in final)
    assert all(torch.equal(evaluated[3][k], final[k]) for k in final)


def swalr_lrs(epochs: int, first: int, base_lr: float, lr: float | None, anneal_epochs: int, strategy: str,
              cosine: bool, per_epoch: int = U) -> list[float]:
    """The LR of each update under torch's SWALR (built when the SWA phase begins, stepped
    after each of its epochs), after CosineAnnealingLR (stepped per epoch) or a constant LR."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    schedule = CosineAnnealingLR(optimizer, T_max=epochs) if cosine else None
    swa, lrs = None, []
    for epoch in range(epochs):
        if epoch == first:
            in_effect = optimizer.param_groups[0]["lr"]
            swa = SWALR(optimizer, swa_lr=in_effect if lr is None else lr, anneal_epochs=anneal_epochs,
                        anneal_strategy=strategy)
        lrs += [optimizer.param_groups[0]["lr"]] * per_epoch
        optimizer.step()
        if swa is not None or schedule is not None:
            (swa or schedule).step()
    return lrs


@pytest.mark.parametrize("strategy, cosine, lr, anneal_epochs", [
    ("cos", False, 0.02, 2),
    ("linear", True, 0.02, 3),
    ("cos", True, None, 2),  # the LR in effect when SWA began, held
    ("linear", True, 0.3, 0),  # at once, and above the LR in effect
])
def test_the_lr_follows_torch_swalr_also_after_cosine(strategy, cosine, lr, anneal_epochs, hpplug_register,
                                                      hpplug_train):
    hpplug_register("swa", SWA)
    swa = {"start": 0.4, "lr": lr, "anneal_epochs": anneal_epochs, "anneal_strategy": strategy}
    result = hpplug_train(["cosine", "swa"] if cosine else ["swa"], params={"swa": swa}, epochs=5, log_every=1,
                          batch_size=256, lr=0.1)
    logged = [row["lr"] for row in read_metrics(result) if "lr" in row and "train/accuracy" not in row]
    expected = swalr_lrs(5, 2, 0.1, lr, anneal_epochs, strategy, cosine)
    assert logged == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert len(set(logged[2 * U:])) == (1 if lr is None or anneal_epochs == 0 else min(anneal_epochs + 1, 3))


class BnSpy(Plugin):
    """After ``swa``: the training inputs ``hpplug_train_end`` hands out, and the final weights."""

    inputs: list[torch.Tensor] = []
    final: dict[str, torch.Tensor] = {}

    @hookimpl
    def hpplug_train_end(self, model: nn.Module, progress: Progress, train_inputs: Any) -> None:
        BnSpy.inputs = [x.float().cpu() for x in train_inputs()]
        BnSpy.final = snapshot(model)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_batch_norm_statistics_are_recomputed_for_the_average(precision, hpplug_register, tmp_path):
    hpplug_register("swa", SWA)
    hpplug_register("bn-spy", BnSpy)
    result = hpplug.train(model=bn_net(), dataset="digits", plugins=["swa", "bn-spy"], params={"swa": {"start": 0.5}},
                          epochs=2, mixed_precision=precision, wandb_mode="disabled", output_dir=str(tmp_path / "runs"),
                          data_root=str(tmp_path / "data"))
    assert result.status == "finished"
    w = BnSpy.final
    assert sum(len(x) for x in BnSpy.inputs) == 1293
    # update_bn with momentum None: the plain mean over batches of each batch's statistics.
    hidden = [F.linear(x.flatten(1), w["1.weight"], w["1.bias"]) for x in BnSpy.inputs]
    mean = torch.stack([h.mean(0) for h in hidden]).mean(0)
    var = torch.stack([h.var(0) for h in hidden]).mean(0)
    tolerance = 1e-5 if precision == "no" else 0.05  # bf16: the layer's output is rounded
    torch.testing.assert_close(w["2.running_mean"], mean, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(w["2.running_var"], var, rtol=tolerance, atol=tolerance)
    assert int(w["2.num_batches_tracked"]) == len(BnSpy.inputs)


def test_a_crash_mid_swa_and_resume_ends_exactly_like_the_uninterrupted_run(hpplug_register, hpplug_train,
                                                                           tmp_path):
    resume = resume_tests()
    hpplug_register("swa", SWA)
    hpplug_register("crash-at", resume.CrashAt)
    # 11 updates per epoch, SWA from the second: the last checkpoint before the crash at update 35
    # is the end of the third epoch (update 33), with two samples averaged, in the middle of
    # the annealing, which still needs the LR that SWA began from.
    swa = {"start": 0.25, "lr": 0.02, "anneal_epochs": 3}
    options = dict(epochs=4, batch_size=128, log_every=4, checkpoint_every="10", plugins=["crash-at", "cosine", "swa"],
                   params={"swa": swa})
    baseline, cut = resume.crash_and_resume(hpplug_train, tmp_path, options)
    resume.assert_same_run(cut, baseline)
    last_epoch = [row for row in resume.rows(cut) if "val/accuracy" in row][-1]
    assert last_epoch["lr"] == pytest.approx(swalr_lrs(4, 1, 0.1, 0.02, 3, "cos", True, per_epoch=11)[-1], rel=1e-12)


# --- hostile input ------------------------------------------------------------------------


def test_ema_and_swa_together_are_refused_before_training(hpplug_register, hpplug_train):
    hpplug_register("ema", EMA)
    hpplug_register("swa", SWA)
    with pytest.raises(HpplugError, match="weight-average"):
        hpplug_train(["ema", "swa"])


@pytest.mark.parametrize("factor", ["0.5", float("nan"), -1.0, [1.0]])
def test_a_checkpointed_start_lr_that_is_not_a_factor_is_refused(factor):
    with pytest.raises(ValueError, match="is not a finite LR factor"):
        SWA().load_state_dict({"average": None, "start_factor": factor})


@pytest.mark.parametrize("name, value, expected", [
    ("lr", -0.1, ">= 0.0"), ("anneal_strategy", "exp", "one of cos, linear"), ("start", 1.5, "between"),
    ("anneal_epochs", 1.5, "not an integer"),
])
def test_bad_parameters_are_refused_before_training(name, value, expected, hpplug_register, hpplug_train):
    hpplug_register("swa", SWA)
    with pytest.raises(HpplugError, match=expected):
        hpplug_train(["swa"], params={"swa": {name: value}})
