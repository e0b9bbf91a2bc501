"""The engine's contract with plugins: hook order, LR composition, metrics, precision."""

import json

import pytest
import torch

from hpplug import HpplugError, Plugin, hookimpl
from hpplug.errors import PluginError


def _metrics(result):
    lines = (result.record_dir and open(f"{result.record_dir}/metrics.jsonl").read().splitlines())
    return [json.loads(line) for line in lines]


class Half(Plugin):
    slot = "lr-schedule"
    composable = True

    @hookimpl
    def hpplug_lr_factor(self, progress, base_lr):
        return 0.5


class Tenth(Plugin):
    slot = "lr-schedule"
    composable = True

    @hookimpl
    def hpplug_lr_factor(self, progress, base_lr):
        return 0.1 if progress.update >= 10 else 1.0


def test_lr_factors_of_all_plugins_multiply(hpplug_register, hpplug_train):
    hpplug_register("half", Half)
    hpplug_register("tenth", Tenth)
    result = hpplug_train(["half", "tenth"], log_every=1, epochs=1)
    lrs = {m["step"]: m["lr"] for m in _metrics(result) if "train/loss" in m and "val/accuracy" not in m}
    assert lrs[1] == pytest.approx(0.05) and lrs[10] == pytest.approx(0.05)
    assert lrs[11] == pytest.approx(0.005)


def test_hooks_run_in_command_line_order_and_see_train_flag(hpplug_register, hpplug_train):
    calls = []

    def recorder(tag):
        class Recorder(Plugin):
            @hookimpl
            def hpplug_transform_batch(self, batch, progress):
                calls.append((tag, batch.train))
        return Recorder

    hpplug_register("first", recorder("first"))
    hpplug_register("second", recorder("second"))
    hpplug_train(["second", "first"], epochs=1)
    train_calls = [tag for tag, train in calls if train]
    assert train_calls[:4] == ["second", "first", "second", "first"]
    assert any(not train for _, train in calls), "evaluation batches go through the hook too"


def test_epoch_end_metrics_are_logged_and_evaluation_sees_global_metrics(hpplug_register, hpplug_train):
    seen = []

    class Extra(Plugin):
        @hookimpl
        def hpplug_evaluation_end(self, metrics, progress):
            seen.append(metrics.get("val/accuracy", metrics.get("test/accuracy")))

        @hookimpl
        def hpplug_epoch_end(self, metrics, progress):
            return {"extra/epoch_squared": float(progress.epoch ** 2)}

    hpplug_register("extra", Extra)
    result = hpplug_train(["extra"], epochs=2)
    epoch_rows = [m for m in _metrics(result) if "val/accuracy" in m]
    assert [m["extra/epoch_squared"] for m in epoch_rows] == [1.0, 4.0]
    # after each epoch's validation, then once after the test at the end
    assert seen == [m["val/accuracy"] for m in epoch_rows] + [result.summary["test/accuracy"]]


def test_loss_hook_replaces_cross_entropy(hpplug_register, hpplug_train):
    class ZeroLoss(Plugin):
        slot = "loss"

        @hookimpl
        def hpplug_loss(self, logits, targets):
            return (logits * 0).sum(dim=1)

    hpplug_register("zero-loss", ZeroLoss)
    result = hpplug_train(["zero-loss"], epochs=1)
    assert result.summary["train/loss"] == 0.0


def test_bf16_runs_the_forward_under_autocast(hpplug_register, hpplug_train):
    dtypes = set()

    class Probe(Plugin):
        @hookimpl
        def hpplug_adjust_model(self, model, config):
            model[1].register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))

    hpplug_register("probe", Probe)
    hpplug_train(["probe"], epochs=1, mixed_precision="bf16")
    assert dtypes == {torch.bfloat16}


def test_fp16_without_a_gpu_is_a_clear_error(hpplug_train):
    if torch.cuda.is_available():
        pytest.skip("fp16 runs where a GPU is present")
    with pytest.raises(HpplugError, match="fp16 needs a CUDA GPU"):
        hpplug_train([], mixed_precision="fp16")


def test_a_failed_run_keeps_its_record_and_says_failed(hpplug_register, hpplug_train, tmp_path):
    class Boom(Plugin):
        @hookimpl
        def hpplug_after_optimizer_step(self, model, progress):
            if progress.update == 20:
                raise RuntimeError("boom")

    hpplug_register("boom", Boom)
    with pytest.raises(PluginError, match="plugin 'boom' failed in hpplug_after_optimizer_step: RuntimeError: boom"):
        hpplug_train(["boom"], epochs=2, log_every=5)
    (record,) = (tmp_path / "runs").iterdir()
    assert json.loads((record / "summary.json").read_text())["status"] == "failed"
    steps = [json.loads(l)["step"] for l in (record / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15], "metrics logged before the failure are kept"


def test_grad_accum_counts_updates_and_matches_the_full_batch(hpplug_register, hpplug_train, tmp_path):
    """Two micro-batches of 32 make one update equal to a batch of 64, LR included."""
    weights = {}

    class Keep(Plugin):
        @hookimpl
        def hpplug_adjust_model(self, model, config):
            weights[config.grad_accum] = model

    hpplug_register("keep", Keep)
    options = dict(epochs=2, log_every=1, plugins=["keep", "cosine", "lr-scaling"],
                   params={"cosine": {"interval": "update"}, "lr-scaling": {"base_batch": 32}})
    full = hpplug_train(batch_size=64, output_dir=str(tmp_path / "full"), **options)
    accum = hpplug_train(batch_size=32, grad_accum=2, output_dir=str(tmp_path / "accum"), **options)
    assert full.summary["updates"] == accum.summary["updates"] == 2 * 21  # ceil(1293 / 64): 144 held out
    lr_full = [m["lr"] for m in _metrics(full) if "lr" in m and "val/accuracy" not in m]
    lr_accum = [m["lr"] for m in _metrics(accum) if "lr" in m and "val/accuracy" not in m]
    assert lr_accum == pytest.approx(lr_full, rel=1e-12) and lr_full[0] == pytest.approx(0.2)
    for a, b in zip(weights[1].parameters(), weights[2].parameters()):
        assert torch.allclose(a, b, atol=1e-5)
