"""The hooks a training method is written with, tested through small in-process plugins: the
order they fire in (against the order documented in ``hpplug.hookspecs.ORDER``), across a
resume and a stop, a plugin driving the optimizer step, first-result conflicts, per-update
metrics, soft targets, and the read-only views hooks get."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from hpplug import HpplugError, Plugin, hookimpl
from hpplug.discovery import FIRST_RESULT, HOOKS
from hpplug.hookspecs import ORDER
from hpplug.testing import read_metrics

from .driver import Crash, CrashAt, resume
from .hostile.conftest import Outcome, assert_same_run, rows

QUICK = ["--epochs", "1", "--batch-size", "512", "--wandb-mode", "disabled"]


# --- the documented order, unrolled --------------------------------------------------------

HOOK = re.compile(r"hpplug_\w+")


def documented_trace(epochs: int, updates: int, grad_accum: int, log_every: int) -> list[str]:
    """The hooks a run fires, in order, as ``ORDER`` documents them, unrolled for a run of
    ``epochs`` x ``updates`` updates; evaluation hooks carry their split (``:val``, ``:test``)."""
    tree: list = []
    stack = [(-1, tree)]
    for line in ORDER.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        while stack[-1][0] >= indent:
            stack.pop()
        children: list = []
        stack[-1][1].append((line.strip(), children))
        stack.append((indent, children))

    def unroll(nodes: list, epoch: int = 0, update: int = 0) -> list[str]:
        out = []
        for text, children in nodes:
            head, colon, inline = text.partition(":")
            if head == "for each epoch":
                for e in range(epochs):
                    out += unroll(children, e)
            elif head == "for each optimizer update":
                for u in range(updates):
                    out += unroll(children, epoch, epoch * updates + u + 1)
            elif head == "for each micro-batch":
                out += HOOK.findall(inline) * grad_accum
            elif head == "every --log-every updates":
                out += HOOK.findall(inline) if update % log_every == 0 else []
            else:
                assert not colon, f"ORDER has a construct this test does not know: {text!r}"
                split = ":val" if "validation" in text else ":test" if " test " in text else ""
                out += [h + split if h.startswith("hpplug_evaluation_") else h for h in HOOK.findall(text)]
        return out

    return unroll(tree)


def traced(hook: str):
    """An implementation of ``hook`` that takes no argument and appends its name to the trace."""
    def implementation(self):
        Trace.events.append(hook)

    implementation.__name__, implementation.__qualname__ = hook, f"Trace.{hook}"  # a method: pluggy skips self
    return hookimpl(implementation)


SPECIAL = {"hpplug_train_start", "hpplug_transform_batch", "hpplug_evaluation_start", "hpplug_evaluation_end"}


class Trace(Plugin):
    """Appends each hook it sees to ``Trace.events`` (training batches only for
    ``hpplug_transform_batch``; the split for evaluations), and where training (re)started."""

    events: list[str] = []
    starts: list[int] = []
    locals().update({hook: traced(hook) for hook in set(HOOKS) - SPECIAL})

    @hookimpl
    def hpplug_train_start(self, progress):
        Trace.events.append("hpplug_train_start")
        Trace.starts.append(progress.update)

    @hookimpl
    def hpplug_transform_batch(self, batch):
        if batch.train:
            Trace.events.append("hpplug_transform_batch")

    @hookimpl
    def hpplug_evaluation_start(self, split):
        Trace.events.append(f"hpplug_evaluation_start:{split}")

    @hookimpl
    def hpplug_evaluation_end(self, split):
        Trace.events.append(f"hpplug_evaluation_end:{split}")

    def load_state_dict(self, state):
        Trace.events.append("load_state_dict")


@pytest.fixture
def trace(hpplug_register):
    hpplug_register("trace", Trace)
    Trace.events, Trace.starts = [], []
    return Trace


def test_the_documented_order_names_every_hook():
    assert set(HOOK.findall(ORDER)) == set(HOOKS)


@pytest.mark.parametrize("grad_accum", [
    1,
    2,
])
def test_hooks_fire_in_the_documented_order(grad_accum, trace, hpplug_train):
    result = hpplug_train(["trace"], epochs=2, batch_size=128, grad_accum=grad_accum, log_every=4)
    updates = result.summary["updates"] // 2
    assert updates == math.ceil(1293 / (128 * grad_accum))
    assert trace.events == documented_trace(2, updates, grad_accum, 4)
    assert trace.starts == [0]


# --- resume, stop ----------------------------------------------------------------------------


class CrashInTest(Plugin):
    """Raises :class:`Crash` when the test split's evaluation starts, if ``armed``: training
    has ended and its checkpoint is saved, the test is not done."""

    armed = False

    @hookimpl
    def hpplug_evaluation_start(self, model, split, progress):
        if split == "test" and CrashInTest.armed:
            raise Crash()


class StopAfterFirstEpoch(Plugin):
    @hookimpl
    def hpplug_should_stop(self, metrics, progress):
        return f"enough after epoch {progress.epoch}" if progress.epoch == 1 else None


@pytest.fixture
def crashes(hpplug_register):
    hpplug_register("crash-at", CrashAt)
    hpplug_register("crash-in-test", CrashInTest)
    hpplug_register("stop-after-first-epoch", StopAfterFirstEpoch)
    yield
    CrashAt.at, CrashInTest.armed = -1, False


def crashed(hpplug_train, output_dir: Path, **options) -> Path:
    """The record of a run that ``Crash`` ended."""
    with pytest.raises(Crash):
        hpplug_train(output_dir=str(output_dir), **options)
    (record,) = output_dir.iterdir()
    return record


SET_UP = ["hpplug_adjust_config", "hpplug_adjust_model", "hpplug_param_groups", "load_state_dict"]


def test_train_start_fires_again_on_resume_after_the_state_is_loaded(trace, crashes, hpplug_train, tmp_path):
    options = dict(plugins=["trace", "crash-at"], epochs=2, batch_size=256, checkpoint_every="2", log_every=2)
    baseline = Path(hpplug_train(output_dir=str(tmp_path / "a"), **options).record_dir)
    CrashAt.at = 9  # of 12; the checkpoint of update 8, in the second epoch
    record = crashed(hpplug_train, tmp_path / "b", **options)
    CrashAt.at, trace.events, trace.starts = -1, [], []
    resume(record)
    assert trace.events[:6] == SET_UP + ["hpplug_train_start", "hpplug_epoch_start"]
    assert trace.starts == [8]
    assert trace.events.count("hpplug_train_end") == 1
    assert_same_run(record, baseline)


def test_a_run_resumed_after_training_ended_only_runs_the_test(trace, crashes, hpplug_train, tmp_path):
    options = dict(plugins=["trace", "crash-in-test"], epochs=2, checkpoint_every="1epoch")
    baseline = Path(hpplug_train(output_dir=str(tmp_path / "a"), **options).record_dir)
    CrashInTest.armed = True
    record = crashed(hpplug_train, tmp_path / "b", **options)
    CrashInTest.armed, trace.events = False, []
    resume(record)
    assert trace.events == SET_UP + ["hpplug_evaluation_start:test", "hpplug_evaluation_end:test"]
    assert_same_run(record, baseline)


def test_a_stop_ends_training_then_tests_and_reports_why(trace, crashes, hpplug_train, tmp_path):
    result = hpplug_train(["trace", "stop-after-first-epoch"], epochs=3, batch_size=256, output_dir=str(tmp_path))
    assert result.status == "stopped"
    assert (result.summary["stop_reason"], result.summary["epochs_done"]) == ("enough after epoch 1", 1)
    assert result.summary["updates"] == 6 and "test/accuracy" in result.summary
    assert trace.events[-5:] == ["hpplug_epoch_end", "hpplug_should_stop", "hpplug_train_end",
                                 "hpplug_evaluation_start:test", "hpplug_evaluation_end:test"]
    assert trace.events.count("hpplug_epoch_start") == 1


def test_a_stopped_run_resumed_from_its_last_checkpoint_trains_no_more(trace, crashes, hpplug_train, tmp_path):
    options = dict(plugins=["trace", "crash-in-test", "stop-after-first-epoch"], epochs=3, batch_size=256,
                   checkpoint_every="1epoch")
    baseline = hpplug_train(output_dir=str(tmp_path / "a"), **options)
    CrashInTest.armed = True
    record = crashed(hpplug_train, tmp_path / "b", **options)
    CrashInTest.armed, trace.events = False, []
    result = resume(record)
    assert trace.events == SET_UP + ["hpplug_evaluation_start:test", "hpplug_evaluation_end:test"]
    assert result.status == "stopped" and result.summary["stop_reason"] == "enough after epoch 1"
    assert (result.summary["epochs_done"], result.summary["updates"]) == (1, 6)
    assert rows(record) == rows(Path(baseline.record_dir))


def test_a_run_a_plugin_stopped_is_complete_and_not_resumed(crashes, hpplug_train, hpplug_cli, tmp_path):
    """It was trained and tested: --resume refuses it, --resume auto skips it."""
    result = hpplug_train(["stop-after-first-epoch"], epochs=3, batch_size=256, checkpoint_every="1epoch",
                          output_dir=str(tmp_path))
    assert result.status == "stopped"
    auto = Outcome(*hpplug_cli("run", "--resume", "auto", "--output-dir", str(tmp_path)))
    assert auto.code == 2 and "no unfinished run" in auto.line
    named = Outcome(*hpplug_cli("run", "--resume", result.record_dir))
    assert named.code == 2 and "already ended (stopped); nothing to resume" in named.line


# --- the optimizer step --------------------------------------------------------------------


class StepsItself(Plugin):
    """Takes the step itself through ``step.step()``."""

    calls = 0

    @hookimpl
    def hpplug_optimizer_step(self, step, progress):
        StepsItself.calls += 1
        step.step()
        return True


class ClaimsTheStep(Plugin):
    """Says it stepped, and does not: the weights must never move (hpplug must not step too),
    and the gradients are zeroed all the same."""

    moved = leftover = None

    @hookimpl
    def hpplug_train_start(self, model, progress, config):
        self.initial = [p.detach().clone() for p in model.parameters()]
        ClaimsTheStep.leftover = 0

    @hookimpl
    def hpplug_optimizer_step(self, step, progress):
        return True

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        ClaimsTheStep.leftover += sum(p.grad is not None and bool(p.grad.any()) for p in model.parameters())

    @hookimpl
    def hpplug_train_end(self, model, progress, train_inputs):
        ClaimsTheStep.moved = max(float((p.detach() - q).abs().max()) for p, q in zip(model.parameters(), self.initial))


def test_a_plugin_that_steps_itself_trains_like_hpplug_s_own_step(hpplug_register, hpplug_train, tmp_path):
    hpplug_register("steps-itself", StepsItself)
    StepsItself.calls = 0
    own = hpplug_train(["steps-itself"], output_dir=str(tmp_path / "a"))
    plain = hpplug_train([], output_dir=str(tmp_path / "b"))
    assert StepsItself.calls == own.summary["updates"] == 21
    assert rows(Path(own.record_dir)) == rows(Path(plain.record_dir))


def test_a_plugin_that_returns_true_owns_the_step(hpplug_register, hpplug_train):
    hpplug_register("claims-the-step", ClaimsTheStep)
    result = hpplug_train(["claims-the-step"])
    assert result.status == "finished"
    assert ClaimsTheStep.moved == 0.0, "hpplug stepped as well"
    assert ClaimsTheStep.leftover == 0, "the gradients are zeroed after a plugin's step"


class Noise(Plugin):
    """Random noise on the training inputs, drawn from the batch's generator."""

    @hookimpl
    def hpplug_transform_batch(self, batch, progress):
        if batch.train:
            noise = torch.randn(batch.x.shape, generator=batch.generator, device=batch.generator.device)
            batch.x = batch.x + noise.to(batch.x.device)


class Recomputes(Plugin):
    """Runs the update's forward and backward a second time: the gradients must double."""

    worst = losses = None

    @hookimpl
    def hpplug_train_start(self, model, progress, config):
        Recomputes.worst, Recomputes.losses = 0.0, []

    @hookimpl
    def hpplug_optimizer_step(self, step, progress):
        first = [p.grad.clone() for p in step.model.parameters()]
        loss = step.recompute()
        Recomputes.losses.append(float(loss))
        for once, twice in zip(first, (p.grad for p in step.model.parameters())):
            Recomputes.worst = max(Recomputes.worst, float((twice - 2 * once).abs().max() / once.abs().max()))
        return None  # hpplug steps, on the doubled gradients


def test_recompute_runs_the_same_micro_batches_again(hpplug_register, hpplug_train, tmp_path):
    """With random noise on the inputs and 2 micro-batches per update: the second pass sees
    the same inputs, so the gradients are exactly doubled: the run trains like one at twice
    the LR."""
    hpplug_register("noise", Noise)
    hpplug_register("recomputes", Recomputes)
    doubled = hpplug_train(["noise", "recomputes"], grad_accum=2, batch_size=32, output_dir=str(tmp_path / "a"))
    assert Recomputes.worst < 1e-6
    assert len(Recomputes.losses) == 21 and all(math.isfinite(v) and v > 0 for v in Recomputes.losses)
    twice_the_lr = hpplug_train(["noise"], grad_accum=2, batch_size=32, lr=0.2, output_dir=str(tmp_path / "b"))
    for a, b in zip(rows(Path(doubled.record_dir)), rows(Path(twice_the_lr.record_dir)), strict=True):
        if "lr" in a:
            assert a.pop("lr") == b.pop("lr") / 2
        assert a == pytest.approx(b, rel=1e-6)  # the sums' order differs: (a + b) + a + b, not 2 (a + b)


# --- first-result hooks: one answer, unless they compose -----------------------------------


def answering(hook: str, composable: bool = False, wrapper: bool = False) -> type:
    """A plugin class that implements ``hook`` (answering nothing), plainly or as a wrapper."""
    if wrapper:
        def implementation(self):
            return (yield)
    else:
        def implementation(self):
            return None
    implementation.__name__, implementation.__qualname__ = hook, f"Answers.{hook}"  # a method: pluggy skips self
    return type(f"Answers_{hook}", (Plugin,), {hook: hookimpl(wrapper=wrapper)(implementation),
                                                "composable": composable, "__doc__": f"Implements {hook}."})


@pytest.mark.parametrize("hook", sorted(FIRST_RESULT))
def test_two_plugins_answering_a_first_result_hook_are_refused_unless_one_composes(hook, hpplug_register,
                                                                                  hpplug_cli, tmp_path):
    hpplug_register("one", answering(hook))
    hpplug_register("two", answering(hook))
    hpplug_register("composes", answering(hook, composable=True))
    hpplug_register("wraps", answering(hook, wrapper=True))
    out = tmp_path / "runs"
    refusal = Outcome(*hpplug_cli("run", "--plugin", "one", "--plugin", "two", *QUICK, "--output-dir", str(out)))
    assert refusal.code == 2
    assert f"plugins one, two all implement {hook}, where the first result wins, and do not compose" in refusal.line
    assert not out.exists(), "refused before anything ran"
    for other in ("composes", "wraps"):
        code, _, err = hpplug_cli("run", "--plugin", "one", "--plugin", other, *QUICK, "--output-dir", str(out / other))
        assert code == 0, err


# --- what plugins report, what they change -------------------------------------------------


class UpdateMetrics(Plugin):
    @hookimpl
    def hpplug_update_metrics(self, progress):
        return {"probe/update": float(progress.update)}


class ReservedUpdateMetric(Plugin):
    @hookimpl
    def hpplug_update_metrics(self, progress):
        return {"train/mine": 1.0}


def test_update_metrics_are_logged_at_each_log_point(hpplug_register, hpplug_train):
    hpplug_register("update-metrics", UpdateMetrics)
    result = hpplug_train(["update-metrics"], batch_size=128, log_every=4)
    logged = read_metrics(result)
    update_rows = [row for row in logged if "train/loss" in row and "val/loss" not in row]
    assert [row["step"] for row in update_rows] == [4, 8]
    assert all(row["probe/update"] == row["step"] for row in update_rows)
    assert not any("probe/update" in row for row in logged if row not in update_rows)


def test_an_update_metric_under_hpplug_s_own_name_fails_in_one_line(hpplug_register, hpplug_cli, tmp_path):
    hpplug_register("reserved-metric", ReservedUpdateMetric)
    outcome = Outcome(*hpplug_cli("run", "--plugin", "reserved-metric", *QUICK, "--log-every", "1",
                                  "--output-dir", str(tmp_path)))
    assert outcome.code == 1
    assert outcome.line.startswith("Error: plugin 'reserved-metric' failed in hpplug_update_metrics: "
                                   "returned the metric 'train/mine', which hpplug logs itself")


class ShiftedSoftTargets(Plugin):
    """Training targets as probabilities whose dominant class is the next one: (y + 1) % 10."""

    @hookimpl
    def hpplug_transform_batch(self, batch, progress):
        if batch.train:
            shifted = torch.roll(batch.soft_targets(), 1, dims=1)
            batch.y = 0.7 * shifted + 0.3 / batch.num_classes


def test_soft_targets_train_and_accuracy_counts_the_dominant_label(hpplug_register, hpplug_train):
    """With label smoothing on top. The model learns the shifted labels: training accuracy,
    against the dominant label, is high; validation, on the true labels, is low."""
    hpplug_register("shifted-soft-targets", ShiftedSoftTargets)
    result = hpplug_train(["shifted-soft-targets", "label-smoothing"], epochs=3)
    assert result.status == "finished"
    assert result.summary["train/accuracy"] > 0.7
    assert result.summary["val/accuracy"] < 0.2


class WritesProgress(Plugin):
    @hookimpl
    def hpplug_epoch_start(self, progress):
        progress.epoch = 5


class WritesMetrics(Plugin):
    @hookimpl
    def hpplug_epoch_end(self, metrics, progress):
        metrics["val/accuracy"] = 1.0


class WritesConfig(Plugin):
    @hookimpl
    def hpplug_train_start(self, model, progress, config):
        config.lr = 1.0


@pytest.mark.parametrize("cls, hook, words", [
    (WritesProgress, "hpplug_epoch_start", "FrozenInstanceError: cannot assign to field 'epoch'"),
    (WritesMetrics, "hpplug_epoch_end", "TypeError: 'mappingproxy' object does not support item assignment"),
    (WritesConfig, "hpplug_train_start", "changed the config it was given, which is read-only here (change it in "
                                         "hpplug_adjust_config)"),
])
def test_a_plugin_writing_to_a_read_only_view_fails_in_one_line_naming_it(cls, hook, words, hpplug_register,
                                                                         hpplug_cli, tmp_path):
    hpplug_register("writer", cls)
    outcome = Outcome(*hpplug_cli("run", "--plugin", "writer", *QUICK, "--output-dir", str(tmp_path)))
    assert outcome.code == 1
    assert outcome.line == f"Error: plugin 'writer' failed in {hook}: {words}"


class CannotRunHere(Plugin):
    @hookimpl
    def hpplug_train_start(self, model, progress, config):
        raise HpplugError(f"cannot-run-here needs --batch-size 7, not {config.batch_size}")


def test_train_start_refuses_a_setting_in_one_line_before_training(hpplug_register, hpplug_cli, tmp_path):
    hpplug_register("cannot-run-here", CannotRunHere)
    outcome = Outcome(*hpplug_cli("run", "--plugin", "cannot-run-here", *QUICK, "--output-dir", str(tmp_path)))
    assert (outcome.code, outcome.line) == (2, "Error: cannot-run-here needs --batch-size 7, not 512")
    (record,) = tmp_path.iterdir()
    summary = json.loads((record / "summary.json").read_text())
    assert (summary["status"], summary["updates"], summary["error"]) == ("failed", 0, outcome.line[len("Error: "):])
