"""The training methods in a pack (``hpplug.pack``): each trains a member as it trains alone.

For every packable method (``ema``, ``swa``, ``grad-clip``, ``early-stopping``, ``mixup``,
``cutmix``, ``cutout``), a pack of members with different values of its parameters, LRs
and seeds against each member run alone with ``engine.run``: the same rows, every logged
number (the method's own metrics included) within 1e-4 relative, accuracies within 0.005,
the same status, stop update and stop reason, and the same final weights (for the weight
averages: the average that every evaluation and the final checkpoint use). ``sam`` drives
the optimizer step and is refused with the reason. Hooks that replace weights or gradients
(``p.data = ...``, ``p.grad = ...``, ``zero_grad()``) instead of changing them in place
train as alone too. A killed pack with ``ema``, ``swa``, ``grad-clip`` and
``early-stopping`` members resumes to the uninterrupted result.
"""

from __future__ import annotations

import inspect
import json
import signal
from pathlib import Path

import pytest
import torch

from hpplug import HpplugError, Param, Plugin, discovery, engine, hookimpl
from hpplug.errors import PluginError
from hpplug.pack import packable, run_pack, why_not_packable

from .test_pack import VOLATILE, Boom, NormNet, Signaller, alone, in_child, member, rows, summary, weights

METHODS = ("ema", "swa", "grad-clip", "early-stopping", "mixup", "cutmix", "cutout")
EPOCHS = {"epochs": 2, "log_every": 1, "checkpoint_every": "1epoch"}


def assert_alike(packed, single) -> None:
    """A member against its run alone: status, stop or error, every logged value, final weights."""
    stop = ("status", "stop_reason", "updates", "error", "error_plugin")
    mine, theirs = summary(packed.record_dir), summary(single.record_dir)
    assert {k: mine.get(k) for k in stop} == {k: theirs.get(k) for k in stop}
    a, b = rows(packed.record_dir), rows(single.record_dir)
    assert [(r["step"], sorted(r)) for r in a] == [(r["step"], sorted(r)) for r in b]
    for x, y in zip(a, b):
        for key, value in x.items():
            if key.endswith("accuracy"):
                assert abs(value - y[key]) <= 0.005, (x["step"], key)
            else:  # losses (train, val, test), the LR, the methods' metrics
                assert value == pytest.approx(y[key], rel=1e-4, abs=1e-7), (x["step"], key)
    assert ("test/accuracy" in packed.summary) == ("test/accuracy" in single.summary)
    if "test/accuracy" in single.summary:
        assert abs(packed.summary["test/accuracy"] - single.summary["test/accuracy"]) <= 0.005
    saved = [(Path(r.record_dir) / "checkpoint").is_dir() for r in (packed, single)]
    assert saved[0] == saved[1]
    if not saved[0]:  # failed before its first checkpoint
        return
    mine, theirs = weights(packed.record_dir), weights(single.record_dir)
    assert mine.keys() == theirs.keys()
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-6, msg=name)


def pack_against_alone(tmp_path, monkeypatch, specs, statuses) -> list:
    """Train ``specs(out)`` as one pack and each alone; every member alike (one that fails
    fails where it fails alone). The pack's results."""
    packed = run_pack(specs(tmp_path / "pack"))
    assert [(r.run_id, r.status) for r in packed] == statuses
    assert all(r.summary["pack/size"] == len(statuses) for r in packed)
    for p, spec in zip(packed, specs(tmp_path / "alone")):
        assert_alike(p, alone_or_failed(spec, tmp_path / "alone", monkeypatch))
    return packed


def alone_or_failed(spec, out: Path, monkeypatch) -> engine.RunResult:
    """The trial through ``engine.run``; a run that fails raises there: its record then."""
    try:
        return alone(spec, out, monkeypatch)
    except (PluginError, HpplugError):
        record = out / spec[2]
        return engine.RunResult(spec[2], summary(record)["status"], summary(record), str(record), None, None)


@pytest.fixture
def boom(hpplug_register):
    hpplug_register("boom", Boom)


def test_the_methods_declare_packing_and_sam_is_refused_with_the_reason(tmp_path):
    """Declared in the class, said in the method card; sam's refusal names the step."""
    catalog = discovery.discover()
    assert all(packable(catalog[name].cls) for name in METHODS)
    assert not packable(catalog["sam"].cls)
    line = why_not_packable([member(tmp_path, "a", ["ema"]), member(tmp_path, "b", ["sam"], lr=0.2)])
    assert line == ("plugin sam (hpplug-methods) does not support packing: it drives the optimizer step "
                    "(hpplug_optimizer_step), which a pack takes once for all its trials")
    assert why_not_packable([member(tmp_path, name, [name]) for name in METHODS]) is None
    for name in (*METHODS, "sam"):  # each method card says whether it packs, as its class does
        card = Path(inspect.getfile(catalog[name].cls)).parent / "README.md"
        assert f"**Packs:** {'yes' if packable(catalog[name].cls) else 'no'}" in card.read_text(), name


def test_ema_members_evaluate_and_keep_their_own_average(tmp_path, monkeypatch, boom):
    """Each evaluation swaps the member's average into its slice of the stacked weights (the
    val losses are the average's, as alone), the end copies it in for the test and the
    checkpoint; training goes on from the trained weights. A third member failing at update
    10 leaves the pack, which stacks the others' weights again: their averages go on."""
    specs = lambda out: [  # noqa: E731
        member(out, "fast", ["ema", "dropout"], {"ema": {"decay": 0.9}, "dropout": {"p": 0.1}}, lr=0.2, seed=1,
               **EPOCHS),
        member(out, "slow", ["ema", "dropout"], {"ema": {"decay": 0.99, "warmup": False}, "dropout": {"p": 0.3}},
               lr=0.05, seed=2, **EPOCHS),
        member(out, "broken", ["boom", "ema", "dropout"], {"boom": {"at": 10}}, lr=0.1, seed=3, **EPOCHS),
    ]
    pack_against_alone(tmp_path, monkeypatch, specs, [("fast", "finished"), ("slow", "finished"),
                                                      ("broken", "failed")])


def test_swa_members_anneal_average_and_keep_their_own_mean(tmp_path, monkeypatch):
    """SWALR as an LR factor per member (the LRs logged are alone's exactly), the epoch-end
    mean from each one's start epoch, copied in at the end."""
    specs = lambda out: [  # noqa: E731
        member(out, "late", ["swa", "cosine"], {"swa": {"start": 0.5, "lr": 0.05, "anneal_epochs": 0}}, lr=0.2,
               seed=1, **EPOCHS),
        member(out, "early", ["swa"], {"swa": {"start": 0.0, "anneal_epochs": 1, "anneal_strategy": "linear"}},
               lr=0.05, seed=2, **EPOCHS),
    ]
    late, early = pack_against_alone(tmp_path, monkeypatch, specs, [("late", "finished"), ("early", "finished")])
    assert {r["lr"] for r in rows(early.record_dir) if "lr" in r} == {0.05}, "SWALR held the LR in effect"
    assert {r["lr"] for r in rows(late.record_dir) if "lr" in r and r["step"] > 21} == {0.05}, "SWALR took it to lr"


@pytest.fixture
def normnet(hpplug_register):
    hpplug_register("normnet", NormNet)


def test_weight_averages_of_batch_norm_members_keep_their_own_statistics(tmp_path, monkeypatch, normnet):
    """A CNN with batch norm: ema averages each member's running statistics with its weights
    (``use_buffers``) and swaps them in for evaluations; swa's end recomputes them
    (``update_bn``) on the member's own module, whose buffers are its slice of the stacked
    ones. Every logged value and the final weights and statistics as alone."""
    specs = lambda out: [  # noqa: E731
        member(out, "ema", ["ema", "dropout"], {"ema": {"decay": 0.9}, "dropout": {"p": 0.2}}, model="normnet",
               lr=0.1, seed=1, **EPOCHS),
        member(out, "swa", ["swa", "dropout"], {"swa": {"start": 0.5, "anneal_epochs": 0}}, model="normnet",
               lr=0.05, seed=2, **EPOCHS),
    ]
    pack_against_alone(tmp_path, monkeypatch, specs, [("ema", "finished"), ("swa", "finished")])


def test_grad_clip_members_clip_their_own_gradients_and_log_their_norms(tmp_path, monkeypatch, boom):
    """Clipped in place through the member's gradient views: the norms and shares logged
    (grad-clip/norm, grad-clip/clipped) are alone's, before and after a fourth member's
    failure after update 30 (its last log at 29) stacks the others again."""
    specs = lambda out: [  # noqa: E731
        member(out, "tight", ["grad-clip"], {"grad-clip": {"max_norm": 0.5}}, lr=0.2, seed=1, **EPOCHS),
        member(out, "l1", ["grad-clip"], {"grad-clip": {"max_norm": 4.0, "norm_type": 1.0}}, lr=0.05, seed=2,
               **EPOCHS),
        member(out, "loose", ["grad-clip", "cosine"], {"grad-clip": {"max_norm": 3.0}}, lr=0.3, seed=3, **EPOCHS),
        member(out, "broken", ["grad-clip", "boom"], {"boom": {"at": 30}}, lr=0.1, seed=1, **EPOCHS),
    ]
    packed = pack_against_alone(tmp_path, monkeypatch, specs, [("tight", "finished"), ("l1", "finished"),
                                                               ("loose", "finished"), ("broken", "failed")])
    shares = [[r["grad-clip/clipped"] for r in rows(p.record_dir) if "grad-clip/clipped" in r] for p in packed]
    assert [len(s) for s in shares] == [42, 42, 42, 29]
    assert 0 < sum(shares[0]) and sum(shares[2]) < 42, "some updates clipped, not all of them"


def test_early_stopping_stops_its_member_and_the_others_go_on(tmp_path, monkeypatch):
    """One member stops after its second epoch (its reason and test as alone) while the
    others go on: one watching val/loss to the last epoch, one that stops at the last; one
    watching a metric the run does not log fails after its first epoch, as alone."""
    common = {"epochs": 3, "log_every": 1, "checkpoint_every": "1epoch"}
    specs = lambda out: [  # noqa: E731
        member(out, "strict", ["early-stopping"], {"early-stopping": {"patience": 1, "min_delta": 0.5}}, lr=0.2,
               seed=1, **common),
        member(out, "loss", ["early-stopping"], {"early-stopping": {"patience": 2, "metric": "val/loss"}}, lr=0.05,
               seed=2, **common),
        member(out, "last", ["early-stopping"], {"early-stopping": {"patience": 2, "metric": "lr"}}, lr=0.1,
               seed=3, **common),
        member(out, "typo", ["early-stopping"], {"early-stopping": {"metric": "val/acc"}}, lr=0.1, seed=4, **common),
    ]
    strict, loss, last, typo = pack_against_alone(tmp_path, monkeypatch, specs, [
        ("strict", "stopped"), ("loss", "finished"), ("last", "stopped"), ("typo", "failed")])
    assert typo.summary["updates"] == 21 and "--early-stopping.metric 'val/acc'" in typo.summary["error"]
    assert strict.summary["updates"] == 42 and "val/accuracy did not improve" in strict.summary["stop_reason"]
    assert loss.summary["updates"] == last.summary["updates"] == 63
    assert "lr did not improve" in last.summary["stop_reason"]


def test_mixup_cutmix_and_cutout_members_draw_what_they_draw_alone(tmp_path, monkeypatch):
    """Each member's batches mixed and cut by its own plugins, values and draws (soft targets
    for some members, class indices for another, in one pack), micro-batch by micro-batch."""
    accum = {**EPOCHS, "grad_accum": 2}
    specs = lambda out: [  # noqa: E731
        member(out, "mixup", ["mixup"], {"mixup": {"alpha": 0.4}}, lr=0.2, seed=1, **accum),
        member(out, "cutmix", ["cutmix", "cutout"], {"cutmix": {"alpha": 1.0, "prob": 0.5}, "cutout": {"size": 0.25}},
               lr=0.05, seed=2, **accum),
        member(out, "cutout", ["cutout"], {"cutout": {"size": 0.5}}, lr=0.1, seed=1, **accum),
    ]
    pack_against_alone(tmp_path, monkeypatch, specs, [("mixup", "finished"), ("cutmix", "finished"),
                                                      ("cutout", "finished")])


def test_members_with_the_same_draws_share_one_mixed_batch(tmp_path, monkeypatch):
    """The same seed and values: one batch, mixed and cut once, soft targets and all, for
    members that differ in LR and momentum only (vmap's shared input)."""
    mixing = {"mixup": {"alpha": 1.0}, "cutout": {"size": 0.3}}
    specs = lambda out: [member(out, run_id, ["mixup", "cutout"], mixing, lr=lr, seed=5, momentum=m,  # noqa: E731
                                **EPOCHS) for run_id, lr, m in (("high", 0.2, 0.0), ("low", 0.05, 0.9))]
    pack_against_alone(tmp_path, monkeypatch, specs, [("high", "finished"), ("low", "finished")])


# --- hooks that replace weights or gradients instead of changing them in place ---------------------


class ValueClip(Plugin):
    """Clamps every gradient value, as a new tensor (``p.grad = ...``)."""

    packable = True
    params = {"clip": Param(float, 0.01, "largest gradient value")}

    @hookimpl
    def hpplug_before_optimizer_step(self, model):
        for p in model.parameters():
            p.grad = p.grad.clamp(-self.clip, self.clip)


class Shrink(Plugin):
    """Shrinks the weights after every step as new tensors (``p.data = ...``), then
    ``zero_grad()`` (gradients to None); swaps in halved weights for each evaluation."""

    packable = True
    params = {"by": Param(float, 0.99, "factor")}

    @hookimpl
    def hpplug_after_optimizer_step(self, model):
        for p in model.parameters():
            p.data = p.data * self.by
        model.zero_grad()

    @hookimpl
    def hpplug_evaluation_start(self, model):
        self.kept = [p.data for p in model.parameters()]
        for p in model.parameters():
            p.data = p.data / 2

    @hookimpl
    def hpplug_evaluation_end(self, model):
        for p, kept in zip(model.parameters(), self.kept):
            p.data = kept


class Unset(Plugin):
    """Sets the gradients to None before the step: torch would skip those weights."""

    packable = True

    @hookimpl
    def hpplug_before_optimizer_step(self, model, progress):
        if progress.update == 5:
            model.zero_grad()


@pytest.fixture
def replacing(hpplug_register):
    for name, cls in (("valueclip", ValueClip), ("shrink", Shrink), ("unset", Unset)):
        hpplug_register(name, cls)


def test_hooks_that_replace_weights_or_gradients_train_as_alone(tmp_path, monkeypatch, replacing):
    """``p.grad = ...`` before the step, ``p.data = ...`` and ``zero_grad()`` after it and in
    evaluations (keeping the old weights to put back): the pack stacks the members' tensors
    again, momentum and all, so each trains as alone (grad-clip, after the zero_grad, still
    sees and logs its member's gradients). A gradient set to None before the step ends that
    member with the reason; the others go on."""
    specs = lambda out: [  # noqa: E731
        member(out, "values", ["valueclip"], {"valueclip": {"clip": 0.005}}, lr=0.2, seed=1, momentum=0.9, **EPOCHS),
        member(out, "shrink", ["shrink", "grad-clip"], {"shrink": {"by": 0.98}}, lr=0.1, seed=2, momentum=0.5,
               **EPOCHS),
        member(out, "unset", ["unset"], lr=0.1, seed=3, **EPOCHS),
    ]
    packed = run_pack(specs(tmp_path / "pack"))
    assert [(r.run_id, r.status) for r in packed] == [("values", "finished"), ("shrink", "finished"),
                                                      ("unset", "failed")]
    assert packed[2].summary["updates"] == 5
    assert "gradient of 1.weight to None before the optimizer step" in packed[2].summary["error"]
    for p, spec in zip(packed[:2], specs(tmp_path / "alone")):
        assert_alike(p, alone(spec, tmp_path / "alone", monkeypatch))


# --- kill and resume ---------------------------------------------------------------------------


@pytest.fixture
def signaller(hpplug_register):
    hpplug_register("signaller", Signaller)


def resume_specs(out: Path) -> list:
    """Members with ema, swa and grad-clip, one whose early stopping ends it at update 42,
    one whose early stopping ends it at its last epoch only if its state of the first two
    (the best value and one epoch without improvement) survives the kill."""
    common = {"epochs": 3, "log_every": 4, "checkpoint_every": "10"}
    return [member(out, "ema", ["signaller", "ema", "early-stopping", "dropout"],
                   {"ema": {"decay": 0.95}, "early-stopping": {"metric": "lr", "patience": 2}}, lr=0.2, seed=1,
                   **common),
            member(out, "clip", ["signaller", "grad-clip", "swa", "dropout"],
                   {"grad-clip": {"max_norm": 1.0}, "swa": {"start": 0.3}},
                   lr=0.1, seed=2, **common),
            member(out, "stop", ["signaller", "early-stopping", "ema", "dropout"],
                   {"early-stopping": {"patience": 1, "metric": "lr"}, "ema": {"decay": 0.9}}, lr=0.3, seed=3,
                   **common)]


@pytest.mark.slow
def test_a_killed_pack_of_methods_resumes_to_the_uninterrupted_result(tmp_path, signaller, monkeypatch):
    """SIGKILL after update 55 (checkpoints at 50, the early-stopped member finished at 42):
    the averages, the clip window and the stopping state come back from the checkpoints and
    the resumed pack ends bit for bit as the uninterrupted one."""
    assert in_child(lambda: run_pack(resume_specs(tmp_path / "base")), tmp_path / "child1") == 0
    monkeypatch.setenv("PACK_TEST_SIGNAL_AT", "55")
    monkeypatch.setenv("PACK_TEST_SIGNAL", str(int(signal.SIGKILL)))
    assert in_child(lambda: run_pack(resume_specs(tmp_path / "cut")), tmp_path / "child2") == -signal.SIGKILL
    monkeypatch.delenv("PACK_TEST_SIGNAL_AT")
    cut, base = (summary(tmp_path / run / "stop") for run in ("cut", "base"))
    assert cut["status"] == "stopped" and cut["updates"] == 42
    assert {k: v for k, v in cut.items() if k not in VOLATILE} == {k: v for k, v in base.items() if k not in VOLATILE}
    for r in ("ema", "clip"):
        assert json.loads((tmp_path / "cut" / r / "checkpoint" / "loop.json").read_text())["update"] == 50
        assert not (tmp_path / "cut" / r / "summary.json").exists()
    from hpplug.run_args import resumed_config

    catalog = discovery.discover()
    resumes = [(*resumed_config(catalog, tmp_path / "cut" / r), r, tmp_path / "cut" / r) for r in ("ema", "clip")]
    assert in_child(lambda: run_pack(resumes), tmp_path / "child3") == 0
    for r, status in (("ema", "stopped"), ("clip", "finished")):
        cut, base = tmp_path / "cut" / r, tmp_path / "base" / r
        assert summary(cut)["status"] == summary(base)["status"] == status
        kept = lambda r: {k: v for k, v in summary(r).items() if k not in VOLATILE | {"pack/size"}}  # noqa: E731
        assert kept(cut) == kept(base), "the resumed pack has two members, the first had three"
        assert rows(cut) == rows(base)
        assert all(torch.equal(x, y) for x, y in zip(weights(cut).values(), weights(base).values()))
