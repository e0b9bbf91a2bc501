"""Packed trials (``hpplug.pack``): a member trains as it does alone and stays a complete run.

Equality with ``engine.run``, the vectorized optimizers and dropout draws against torch's,
early termination of one member (a stop-request file, a plugin's stop, a failing plugin),
SIGTERM, SIGKILL and resume, and the trials that cannot share a pack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpplug import HpplugError, Model, Param, Plugin, discovery, engine, hookimpl
from hpplug.pack import STOP_REQUEST, packable, run_pack, why_not_packable
from hpplug.pack.optim import PackedOptimizer
from hpplug.pack.stack import Stack
from hpplug.run_args import build_config
from hpplug.wandb_file import find_run_files, read_run

from .driver import forked

VOLATILE = {"time", "train/samples_per_s", "train/time_s"}  # wall-clock values


def member(out: Path, run_id: str, plugins=(), params=None, resume=None, hidden=64, **core):
    """A member as run_pack takes it (what hpplug.run_args.build_config makes of options); a
    smaller MLP than the seed recipe's unless ``hidden`` says otherwise (quicker)."""
    options = {"epochs": 1, "wandb_mode": "disabled", "output_dir": str(out), "log_every": 5, **core}
    params = {**({"mlp": {"hidden": hidden}} if core.get("model", "mlp") == "mlp" else {}), **(params or {})}
    config, entries = build_config(discovery.discover(), list(plugins), params, options)
    return config, entries, run_id, resume


def alone(spec, out: Path, monkeypatch) -> engine.RunResult:
    """The same trial through engine.run, under the same run id, in ``out``."""
    config, entries, run_id, _ = spec
    config.output_dir = str(out)
    monkeypatch.setenv("WANDB_RUN_ID", run_id)
    try:
        return engine.run(config, entries, show_progress=False)
    finally:
        monkeypatch.delenv("WANDB_RUN_ID")


def rows(record) -> list[dict]:
    lines = (Path(record) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


def summary(record) -> dict:
    return json.loads((Path(record) / "summary.json").read_text())


def assert_trains_alike(packed, single, updates_per_epoch: int, rel: float = 1e-4) -> None:
    """The brief's equality: the same rows (keys, steps, LRs); train losses within 1e-4
    (``rel``) relative over the first epoch; every accuracy within 0.005."""
    a, b = rows(packed), rows(single)
    assert [(r["step"], sorted(r)) for r in a] == [(r["step"], sorted(r)) for r in b]
    for x, y in zip(a, b):
        assert x.get("lr") == y.get("lr")
        if "train/accuracy" not in x and "train/loss" in x and x["step"] <= updates_per_epoch:
            assert x["train/loss"] == pytest.approx(y["train/loss"], rel=rel), x["step"]
        for key in x:
            if key.endswith("accuracy"):
                assert abs(x[key] - y[key]) <= 0.005, (x["step"], key)


# --- plugins for the tests: each declares packing support --------------------------------


class Requester(Plugin):
    """Writes the stop-request file into other members' records, as a sweep runner would."""

    packable = True
    params = {"records": Param(str, "", "records to stop, os.pathsep between"), "at": Param(int, 0, "update")}

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        for record in self.records.split(os.pathsep) if progress.update == self.at else ():
            if Path(record).is_dir():
                Path(record, STOP_REQUEST).write_text("hyperband\n")


class Stopper(Plugin):
    packable = True
    params = {"after": Param(int, 1, "epochs")}

    @hookimpl
    def hpplug_should_stop(self, metrics, progress):
        return f"enough after {progress.epoch} epochs" if progress.epoch >= self.after else None


class Boom(Plugin):
    packable = True
    params = {"at": Param(int, 3, "update")}

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        if progress.update == self.at:
            raise RuntimeError("boom")


class Fussy(Plugin):
    packable = True

    @hookimpl
    def hpplug_transform_batch(self, batch, progress):
        if batch.train and progress.update == 3:
            raise ValueError("fussy")


class Signaller(Plugin):
    """Sends the process a signal after an update (``at``, from the environment) or SIGKILLs it
    at the ``save``-th plugin state saved, that is in the middle of a pack's checkpoints."""

    packable = True
    saves = 0

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        if progress.update == int(os.environ.get("PACK_TEST_SIGNAL_AT", "-1")):
            os.kill(os.getpid(), int(os.environ["PACK_TEST_SIGNAL"]))

    def state_dict(self):
        Signaller.saves += 1
        if Signaller.saves == int(os.environ.get("PACK_TEST_KILL_AT_SAVE", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)
        return {}


class Doubler(Plugin):
    packable = True

    @hookimpl
    def hpplug_adjust_config(self, config):
        config.batch_size *= 2


class NormNet(Model):
    """A small CNN with batch norm (running statistics: buffers a pack stacks as weights) in
    both of its kinds, and dropout."""

    packable = True

    def build(self, input_shape, num_classes):
        channels, height, width = input_shape
        return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Dropout(), nn.Linear(4 * height * width, 16), nn.BatchNorm1d(16), nn.ReLU(),
                             nn.Linear(16, num_classes))


class NoisyNet(Model):
    """Alpha dropout draws its own way: a layer a pack does not draw for."""

    packable = True

    def build(self, input_shape, num_classes):
        return nn.Sequential(nn.AlphaDropout(0.2), nn.Flatten(), nn.Linear(64, num_classes))


class ChannelNet(Model):
    """A CNN with channel dropout (one draw per channel) after each conv, and element dropout."""

    packable = True

    def build(self, input_shape, num_classes):
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3), nn.Conv2d(4, 4, 3),
                             nn.ReLU(), nn.Dropout2d(0.1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 6 * 6, num_classes))


class Branchy(nn.Module):
    """Control flow on a value: fine alone, not under vmap (``.item()`` of a batched tensor);
    with ``eval_only``, in evaluation only (training packs, the first evaluation cannot)."""

    def __init__(self, num_classes: int, eval_only: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(64, num_classes)
        self.eval_only = eval_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        return out if (self.training and self.eval_only) or out.mean().item() > -1e9 else -out


class BranchyNet(Model):
    packable = True
    eval_only = False

    def build(self, input_shape, num_classes):
        return Branchy(num_classes, self.eval_only)


class EvalBranchyNet(BranchyNet):
    eval_only = True


class FrozenNet(Model):
    """A first layer kept as built (fine-tuning's frozen backbone): no gradient, never stepped."""

    packable = True

    def build(self, input_shape, num_classes):
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, num_classes))
        model[1].requires_grad_(False)
        return model


class TrainedOnly(Plugin):
    """The optimizer gets the trainable parameters only, as fine-tuning code often does."""

    packable = True

    @hookimpl
    def hpplug_param_groups(self, model, config):
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]


SHARED_MODULE = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


class SharedNet(Model):
    """Returns one module object to every trial (a model made once, at import)."""

    packable = True

    def build(self, input_shape, num_classes):
        return SHARED_MODULE


class NormMomentum(Plugin):
    """Sets every batch norm's momentum: a setting of the layer, not a tensor."""

    packable = True
    params = {"momentum": Param(float, 0.1, "batch norm momentum")}

    @hookimpl
    def hpplug_adjust_model(self, model, config):
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.momentum = self.momentum


class Unfreezer(Plugin):
    """Keeps the first layer frozen until update ``at``, then trains it (gradual unfreezing)."""

    packable = True
    params = {"at": Param(int, 10, "update that unfreezes it")}

    @hookimpl
    def hpplug_train_start(self, model, progress, config):
        if progress.update < self.at:
            model[1].requires_grad_(False)

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        if progress.update == self.at:
            model[1].requires_grad_(True)


class StepFreezer(Plugin):
    """Freezes the first layer in hpplug_before_optimizer_step after 7 updates: torch then still
    steps it (its gradient is there), which a pack cannot do for one member."""

    packable = True

    @hookimpl
    def hpplug_before_optimizer_step(self, model, progress):
        if progress.update == 7:
            model[1].requires_grad_(False)


class ForTestFreezer(Plugin):
    """Freezes every weight for the test split (an evaluation after training)."""

    packable = True

    @hookimpl
    def hpplug_evaluation_start(self, model, progress, split):
        if split == "test":
            model.requires_grad_(False)


class EpochUnfreezer(Plugin):
    """Freezes the first layer, and unfreezes it when epoch 2 starts, through the model it
    kept from hpplug_train_start (hpplug_epoch_start gets none)."""

    packable = True

    @hookimpl
    def hpplug_train_start(self, model, progress, config):
        self.model = model
        if progress.epoch < 1:
            model[1].requires_grad_(False)

    @hookimpl
    def hpplug_epoch_start(self, progress):
        if progress.epoch == 1:
            self.model[1].requires_grad_(True)


class Unpacked(Plugin):
    @hookimpl
    def hpplug_lr_factor(self, progress, base_lr):
        return 1.0


class Driver(Plugin):
    packable = True  # declared, but driving the step is never packable

    @hookimpl
    def hpplug_optimizer_step(self, step, progress):
        return None


@pytest.fixture
def plugins(hpplug_register):
    for name, cls in [("requester", Requester), ("stopper", Stopper), ("boom", Boom), ("signaller", Signaller),
                      ("doubler", Doubler), ("fussy", Fussy), ("normnet", NormNet), ("noisynet", NoisyNet), ("channelnet", ChannelNet),
                      ("branchy", BranchyNet), ("frozennet", FrozenNet),
                      ("trained-only", TrainedOnly), ("sharednet", SharedNet), ("evalbranchy", EvalBranchyNet),
                      ("norm-momentum", NormMomentum), ("unfreezer", Unfreezer), ("step-freezer", StepFreezer),
                      ("test-freezer", ForTestFreezer), ("epoch-unfreezer", EpochUnfreezer), ("unpacked", Unpacked),
                      ("driver", Driver)]:
        hpplug_register(name, cls)


# --- the parts against torch --------------------------------------------------------------


@pytest.mark.parametrize("p", [0.5, 0.2, 0.9])
def test_dropout_masks_are_the_draws_f_dropout_makes(p):
    """The masks a member draws from its generator reproduce F.dropout on the global one."""
    torch.manual_seed(3)
    x = torch.randn(64, 500)
    torch.manual_seed(7)
    expected = F.dropout(x, p, training=True)
    after = torch.get_rng_state()
    model = nn.Sequential(nn.Linear(500, 500), nn.Dropout(p))
    stack = Stack([model], autocast=contextlib.nullcontext)
    generator = torch.Generator()
    generator.set_state(torch.manual_seed(7).get_state())
    masks = stack.dropout.masks([generator], x, shared=True)
    assert torch.equal(x * masks["1.mask"][0], expected)
    assert torch.equal(generator.get_state(), after), "the member's generator moves on as the global one did"


def test_a_fused_dropout_mask_is_drawn_from_the_members_generator_as_from_the_global_one():
    """Where F.dropout runs the fused native_dropout kernel (CUDA), which draws from torch's
    global generator only, the member's state is put there for the draw and taken back;
    checked here on the CPU's kernel: the same mask and the same state after, the global
    state left as it was. (On a GPU it is untested: none was lent.)"""
    from hpplug.pack.dropout import fused_mask

    torch.manual_seed(7)
    expected = torch.native_dropout(torch.ones(32, 10), 0.3, True)[0]
    after = torch.get_rng_state()
    torch.manual_seed(123)
    outside = torch.get_rng_state()
    generator = torch.Generator().manual_seed(7)
    mask = fused_mask(generator, (32, 10), 0.3, torch.float32, torch.device("cpu"))
    assert torch.equal(mask, expected) and torch.equal(generator.get_state(), after)
    assert torch.equal(torch.get_rng_state(), outside)


class Plain(nn.Module):
    """Settings a pack must not mistake for differences, and a constant buffer every instance
    registers from one tensor."""

    CONSTANT = torch.arange(3.0)

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.stages = (self.linear,)  # references to layers
        self.anchors = (torch.zeros(1),)  # tensors kept in a tuple
        self.tolerance = float("nan")
        self.register_buffer("offset", self.CONSTANT)


def test_what_the_members_may_share_and_hold_does_not_refuse_them():
    from hpplug.pack.stack import check_alike

    check_alike([Plain(), Plain()])
    shared = nn.Linear(3, 2)
    with pytest.raises(HpplugError, match="share 0.weight"):
        check_alike([nn.Sequential(shared), nn.Sequential(shared)])
    norm = nn.BatchNorm1d(3, affine=False)  # no weight, but running statistics: stateful
    with pytest.raises(HpplugError, match="share 0"):
        check_alike([nn.Sequential(norm), nn.Sequential(norm)])


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_the_packed_optimizer_steps_each_member_as_torch_does(kind):
    """Per-member LR, weight decay (per group), momentum, dampening, betas and eps; the
    members' optimizer states in torch's own layout, loadable by a torch optimizer."""
    settings = [
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 5e-4, "betas": (0.9, 0.999), "eps": 1e-8},
        {"lr": 0.03, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "betas": (0.8, 0.99), "eps": 1e-6},
        {"lr": 0.01, "momentum": 0.5, "dampening": 0.0, "weight_decay": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8},
    ]
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3)) for _ in settings]
    reference = [nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3)) for _ in settings]
    for m, r in zip(models, reference):
        r.load_state_dict(m.state_dict())

    def optimizer(model, s):
        keys = ("momentum", "dampening", "weight_decay") if kind == "sgd" else ("betas", "eps", "weight_decay")
        weights, biases = [p for p in model.parameters() if p.ndim > 1], [p for p in model.parameters() if p.ndim == 1]
        groups = [{"params": weights, **{k: s[k] for k in keys}}, {"params": biases, "weight_decay": 0.0}]
        return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](groups, lr=s["lr"])

    mine = [optimizer(m, s) for m, s in zip(models, settings)]
    theirs = [optimizer(r, s) for r, s in zip(reference, settings)]
    stack = Stack(models, autocast=contextlib.nullcontext)
    packed = PackedOptimizer(kind, stack, mine)
    for step in range(5):
        for k, (r, opt) in enumerate(zip(reference, theirs)):
            grads = [torch.randn_like(p) for p in r.parameters()]
            for p, g in zip(r.parameters(), grads):
                p.grad = g
            for name, g in zip(stack.names, grads):
                stack.params[name].grad[k].copy_(g)
            for group in opt.param_groups + mine[k].param_groups:
                group["lr"] = settings[k]["lr"] * (1 + step) / 5  # a schedule, set as hpplug.loop.set_lr does
            opt.step()
        packed.step()
        stack.zero_grad()
    for m, r, a, b in zip(models, reference, mine, theirs):
        for (name, p), q in zip(m.named_parameters(), r.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        assert sa["state"].keys() == sb["state"].keys()
        for i in sb["state"]:
            assert sa["state"][i].keys() == sb["state"][i].keys()
            for key, value in sb["state"][i].items():
                torch.testing.assert_close(sa["state"][i][key], value, rtol=1e-5, atol=1e-7)
                assert sa["state"][i][key].shape == value.shape and sa["state"][i][key].dtype == value.dtype
        b.load_state_dict(sa)  # a member's checkpointed state loads into its run alone


# --- which trials pack ----------------------------------------------------------------------


def test_which_trials_share_a_pack(tmp_path, plugins, monkeypatch):
    def m(run_id="a", plugins_=(), **core):
        return member(tmp_path, run_id, plugins_, **core)

    (tmp_path / "tests_pack_user_model.py").write_text(
        "from torch import nn\nclass Net(nn.Sequential):\n"
        "    def __init__(self, num_classes):\n        super().__init__(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert why_not_packable([m("a", ["cosine", "dropout"]), m("b", ["step", "dropout"], lr=0.3, seed=4)]) is None
    refusals = {
        "batch_size": [m("a"), m("b", batch_size=32)],
        "epochs": [m("a"), m("b", epochs=2)],
        "optimizer": [m("a"), m("b", optimizer="adam")],
        "the model's parameters": [m("a"), m("b", hidden=8)],
        "the plugins that change the model": [m("a", ["dropout"]), m("b")],
        "unpacked": [m("a", ["unpacked"])],
        "driver": [m("a", ["driver"])],
        "fp16": [m("a", mixed_precision="fp16")],
        "same record": [m("a"), m("a", lr=0.5)],
        "model": [m("a"), member(tmp_path, "b", [], model="tests_pack_user_model:Net")],
    }
    # Your own model packs as a built-in one does (one a pack cannot train is trained alone: PackRefused).
    assert why_not_packable([member(tmp_path, "a", [], model="tests_pack_user_model:Net"),
                             member(tmp_path, "b", [], model="tests_pack_user_model:Net", lr=0.3)]) is None
    for expected, trials in refusals.items():
        line = why_not_packable(trials)
        assert line is not None and expected in line and "\n" not in line, (expected, line)
    assert packable(discovery.discover()["digits"].cls), "a data set without hooks is only loaded: it packs"
    with pytest.raises(HpplugError, match="cannot train as one pack: the trials differ in batch_size"):
        run_pack(refusals["batch_size"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists(), "refused before any record"


# --- a pack against its members alone --------------------------------------------------------


@pytest.mark.slow
def test_a_pack_trains_each_member_as_it_trains_alone(tmp_path, monkeypatch):
    """Three members with different LRs, dropout p and seeds, a schedule, weight decay and
    label smoothing on some: each trains as engine.run trains it, and is a complete run:
    its record, its offline W&B run (config and history keys as alone), its checkpoint."""
    common = {"epochs": 2, "log_every": 1, "wandb_mode": "offline", "checkpoint_every": "1epoch", "hidden": 500}
    specs = lambda out: [  # noqa: E731
        member(out, "lrhigh", ["dropout"], {"dropout": {"p": 0.5}}, lr=0.2, seed=1, **common),
        member(out, "sched", ["dropout", "cosine", "weight-decay", "crop"],
               {"dropout": {"p": 0.2}, "crop": {"padding": 1}}, lr=0.05, momentum=0.9, seed=2, **common),
        member(out, "smooth", ["dropout", "label-smoothing"], {"dropout": {"p": 0.0}}, lr=0.1, seed=1, **common),
    ]
    packed = run_pack(specs(tmp_path / "pack"))
    assert [(r.run_id, r.status) for r in packed] == [("lrhigh", "finished"), ("sched", "finished"),
                                                      ("smooth", "finished")]
    single = [alone(spec, tmp_path / "alone", monkeypatch) for spec in specs(tmp_path / "alone")]
    for p, s in zip(packed, single):
        assert_trains_alike(p.record_dir, s.record_dir, updates_per_epoch=21)
        assert abs(p.summary["test/accuracy"] - s.summary["test/accuracy"]) <= 0.005
        assert p.summary["updates"] == s.summary["updates"] == 42 and p.summary["pack/size"] == 3
        config, other = (json.loads(Path(r.record_dir, "config.json").read_text()) for r in (p, s))
        assert config.pop("output_dir") != other.pop("output_dir") and config == other
        assert (Path(p.record_dir) / "checkpoint" / "manifest.json").is_file()
    runs = {f.name: read_run(f) for f in find_run_files(tmp_path / "pack" / "wandb")}
    alone_runs = {f.name: read_run(f) for f in find_run_files(tmp_path / "alone" / "wandb")}
    assert sorted(runs) == sorted(alone_runs) == sorted(f"run-{r.run_id}.wandb" for r in packed)
    for name, run in runs.items():
        other = alone_runs[name]
        assert run.config["settings"].pop("output_dir") != other.config["settings"].pop("output_dir")
        assert run.config == other.config
        assert [sorted(row) for row in run.history] == [sorted(row) for row in other.history]
        assert [row["_step"] for row in run.history] == [row["_step"] for row in other.history]
    # W&B's installed-packages list is read once per pack: each member's file is as alone.
    files = {(root, d.name.rsplit("-", 1)[1]): (d / "files" / "requirements.txt").read_text()
             for root in ("pack", "alone") for d in (tmp_path / root / "wandb").glob("offline-run-*")}
    assert len(files) == 6 and len(set(files.values())) == 1 and "torch==" in next(iter(files.values()))


def test_a_bf16_pack_trains_each_member_as_it_trains_alone_in_bf16(tmp_path, monkeypatch):
    """--mixed-precision bf16 packs (fp16 does not: its loss scale is each run's own). The
    members' batched bf16 matmuls round apart from each one's alone by a bf16 unit now and
    then (2**-8 = 4e-3 relative), so per-update losses agree within 1e-3 relative, not the
    1e-4 of full precision (measured: <= 1.8e-4); accuracies within 0.005 (measured: 0.0015)."""
    common = {"epochs": 1, "log_every": 1, "mixed_precision": "bf16", "hidden": 500}
    specs = lambda out: [member(out, "a", ["dropout"], lr=0.1, seed=1, **common),  # noqa: E731
                         member(out, "b", ["dropout", "cosine"], lr=0.05, seed=3, **common)]
    packed = run_pack(specs(tmp_path / "pack"))
    single = [alone(spec, tmp_path / "alone", monkeypatch) for spec in specs(tmp_path / "alone")]
    for p, s in zip(packed, single):
        assert p.status == s.status == "finished" and p.summary["pack/size"] == 2
        assert_trains_alike(p.record_dir, s.record_dir, updates_per_epoch=21, rel=1e-3)


def test_one_member_stops_early_and_the_others_go_on(tmp_path, plugins, monkeypatch):
    """A stop-request file (a sweep's hyperband) stops a member after the update it appeared
    in, as SIGUSR1 stops a run alone (whatever its --log-every), a plugin's hpplug_should_stop
    another after its epoch, a failing plugin a third; the member without any trains exactly
    as alone."""
    out = tmp_path / "pack"
    specs = lambda out, targets: [  # noqa: E731
        member(out, "free", ["requester", "dropout"], {"requester": {"records": targets, "at": 12}},
               lr=0.2, epochs=2),
        member(out, "hyper", ["dropout"], lr=0.1, seed=3, epochs=2),
        member(out, "patient", ["stopper", "cosine", "dropout"], {"stopper": {"after": 1}}, lr=0.05, epochs=2),
        member(out, "broken", ["boom", "dropout"], {"boom": {"at": 7}}, epochs=2),
        member(out, "late", ["dropout"], lr=0.1, epochs=2, log_every=50),
    ]
    free, hyper, patient, broken, late = run_pack(specs(out, os.pathsep.join(str(out / r) for r in ("hyper", "late"))))
    assert free.status == "finished" and free.summary["updates"] == 42
    assert hyper.status == "stopped" and hyper.summary["updates"] == 12, "the update of the request"
    assert STOP_REQUEST in hyper.summary["stop_reason"] and not (out / "hyper" / STOP_REQUEST).exists()
    assert [r["step"] for r in rows(hyper.record_dir)] == [5, 10] and "test/accuracy" not in hyper.summary
    assert patient.status == "stopped" and patient.summary["stop_reason"] == "enough after 1 epochs"
    assert patient.summary["updates"] == 21 and "test/accuracy" in patient.summary
    assert broken.status == "failed" and broken.summary["error_plugin"] == "boom"
    assert "boom" in broken.summary["error"] and broken.summary["updates"] == 7
    assert summary(broken.record_dir)["status"] == "failed"
    assert late.status == "stopped" and late.summary["updates"] == 12 and "test/accuracy" not in late.summary
    assert rows(late.record_dir) == [] and "val/accuracy" not in late.summary  # no log point, no epoch end yet
    single = {r.run_id: r for r in (alone(s, tmp_path / "alone", monkeypatch)
                                    for s in specs(tmp_path / "alone", str(tmp_path / "none"))[:3])}
    assert_trains_alike(free.record_dir, single["free"].record_dir, updates_per_epoch=21)
    assert_trains_alike(patient.record_dir, single["patient"].record_dir, updates_per_epoch=21)
    cut = [r for r in rows(single["hyper"].record_dir) if r["step"] <= 12 and "train/accuracy" not in r]
    assert [r["train/loss"] for r in rows(hyper.record_dir)] == pytest.approx([r["train/loss"] for r in cut], rel=1e-4)


def test_a_transform_failing_mid_update_ends_its_member_only(tmp_path, plugins, monkeypatch):
    """Two micro-batches per update: the failing member computes on the other's batch until
    the update ends, then leaves; the other trains exactly as alone."""
    specs = lambda out: [member(out, "ok", ["dropout"], grad_accum=2, log_every=1),  # noqa: E731
                         member(out, "fussy", ["fussy", "dropout"], grad_accum=2, log_every=1)]
    ok, fussy = run_pack(specs(tmp_path / "pack"))
    assert (ok.status, ok.summary["updates"]) == ("finished", 11)
    assert (fussy.status, fussy.summary["error_plugin"], fussy.summary["updates"]) == ("failed", "fussy", 3)
    assert_trains_alike(ok.record_dir, alone(specs(tmp_path / "alone")[0], tmp_path / "alone", monkeypatch).record_dir,
                        updates_per_epoch=11)


def test_what_the_members_share_failing_fails_each_run_in_one_line(tmp_path, plugins):
    """A plugin changing a setting the pack shares, or a model a pack cannot stack: every
    member ends failed, its summary naming why; a finished run id is refused untouched."""
    finished = run_pack([member(tmp_path, "done")])[0]
    assert finished.status == "finished"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(finished.record_dir).iterdir()}
    results = run_pack([member(tmp_path, "done"), member(tmp_path, "x", ["doubler"]), member(tmp_path, "y")])
    assert results[0].status == "failed" and "already ended (finished" in results[0].summary["error"]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(finished.record_dir).iterdir()} == before
    for r in results[1:]:
        assert r.status == "failed" and "changed batch_size" in r.summary["error"]
        assert summary(r.record_dir)["error"] == r.summary["error"]
    # What only the built models (or their first vectorized update) show is the pack's fault,
    # not the trials': their summaries say so (pack/refused), and a sweep trains them alone.
    results = run_pack([member(tmp_path, f"n{i}", model="noisynet") for i in range(2)])
    assert all(r.status == "failed" and "AlphaDropout" in r.summary["error"] for r in results)
    assert all(summary(r.record_dir)["pack/refused"] is True for r in results)
    results = run_pack([member(tmp_path, f"v{i}", model="branchy", lr=0.1 * (i + 1)) for i in range(2)])
    for r in results:
        assert r.status == "failed" and summary(r.record_dir)["pack/refused"] is True and r.summary["updates"] == 0
        assert r.summary["error"].startswith("its first update as one vectorized model failed: RuntimeError: ")
    assert summary(tmp_path / "x")["pack/refused"] is True, "alone, a plugin may change the batch size"
    refused = {  # what is only seen once the models are built or run
        "share 1.weight (one module object built for all?)": [member(tmp_path, f"s{i}", model="sharednet")
                                                              for i in range(2)],
        "differ in 1.momentum (0.1 and 0.5) once built": [
            member(tmp_path, f"m{i}", ["norm-momentum"], {"norm-momentum": {"momentum": value}}, model="normnet")
            for i, value in enumerate((0.1, 0.5))],
        "its first evaluation as one vectorized model failed: RuntimeError": [
            member(tmp_path, f"e{i}", model="evalbranchy", lr=0.1 * (i + 1)) for i in range(2)],
    }
    for expected, specs in refused.items():
        for r in run_pack(specs):
            assert r.status == "failed" and expected in r.summary["error"], (expected, r.summary["error"])
            assert summary(r.record_dir)["pack/refused"] is True
    assert "pack/refused" not in summary(tmp_path / "done"), "a finished run is refused for its own reason"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_frozen_weights_stay_as_built_and_the_rest_trains_as_alone(tmp_path, plugins, monkeypatch, optimizer):
    """A model with a frozen layer packs: its weights are stacked without a gradient and no
    optimizer steps them (also when the optimizer's groups leave them out), as alone."""
    specs = lambda out: [  # noqa: E731
        member(out, "a", [], model="frozennet", optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.003,
               momentum=0.9, seed=1, log_every=1, epochs=2, checkpoint_every="1epoch"),
        member(out, "b", ["trained-only"], model="frozennet", optimizer=optimizer,
               lr=0.1 if optimizer == "sgd" else 0.001, seed=2, log_every=1, epochs=2, checkpoint_every="1epoch"),
    ]
    packed = run_pack(specs(tmp_path / "pack"))
    assert [r.status for r in packed] == ["finished", "finished"] and packed[0].summary["pack/size"] == 2
    single = [alone(spec, tmp_path / "alone", monkeypatch) for spec in specs(tmp_path / "alone")]
    def built(seed: int) -> nn.Module:  # as the run builds it: seeded, then built
        torch.manual_seed(seed)
        return FrozenNet().build((1, 8, 8), 10)

    for p, s, first in zip(packed, single, (built(1), built(2))):
        assert_trains_alike(p.record_dir, s.record_dir, updates_per_epoch=21)
        mine, theirs = weights(p.record_dir), weights(s.record_dir)
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-6, msg=name)
        assert torch.equal(mine["1.weight"], theirs["1.weight"]) and torch.equal(mine["1.weight"], first[1].weight)
        assert not torch.equal(mine["4.weight"], first[4].weight)


def test_weights_unfrozen_by_a_hook_train_from_then_on_as_alone(tmp_path, plugins, monkeypatch):
    """A plugin freezes the first layer at the start and unfreezes it after update 10 (the
    same for two members: they stay packed, as alone); a third unfreezes at update 5, which
    the others do not: it leaves the pack then, refused (a sweep trains it alone)."""
    specs = lambda out, late=True: [  # noqa: E731
        member(out, "a", ["unfreezer"], lr=0.1, seed=1, log_every=1),
        member(out, "b", ["unfreezer", "cosine"], lr=0.05, momentum=0.9, seed=2, log_every=1),
        *([member(out, "c", ["unfreezer"], {"unfreezer": {"at": 5}}, lr=0.1, seed=3, log_every=1)] if late else []),
    ]
    packed = run_pack(specs(tmp_path / "pack"))
    assert [r.status for r in packed] == ["finished", "finished", "failed"]
    assert packed[2].summary["updates"] == 5 and summary(packed[2].record_dir)["pack/refused"] is True
    assert "froze or unfroze weights at update 5" in packed[2].summary["error"]
    for p, s in zip(packed, [alone(spec, tmp_path / "alone", monkeypatch) for spec in specs(tmp_path / "alone", False)]):
        assert_trains_alike(p.record_dir, s.record_dir, updates_per_epoch=21)


def test_channel_dropout_draws_each_members_masks_as_alone(tmp_path, plugins, monkeypatch):
    """nn.Dropout2d after convolutions: one draw per channel and sample, from each member's
    own generator, as F.dropout2d draws alone (with element dropout in the same model)."""
    specs = lambda out: [member(out, run_id, [], model="channelnet", lr=lr, seed=seed, log_every=1)  # noqa: E731
                         for run_id, lr, seed in (("a", 0.1, 1), ("b", 0.05, 2), ("c", 0.2, 1))]
    packed = run_pack(specs(tmp_path / "pack"))
    assert [r.status for r in packed] == ["finished"] * 3 and packed[0].summary["pack/size"] == 3
    for p, s in zip(packed, [alone(spec, tmp_path / "alone", monkeypatch) for spec in specs(tmp_path / "alone")]):
        assert_trains_alike(p.record_dir, s.record_dir, updates_per_epoch=21)


def test_freezing_outside_the_model_hooks_or_for_the_test_trains_as_alone(tmp_path, plugins, monkeypatch):
    """A layer unfrozen from hpplug_epoch_start through a model kept from train start (seen
    before the next update), and every weight frozen for the test split by a member that
    stops an epoch early: both as alone, neither refused. Freezing in
    hpplug_before_optimizer_step is refused at that update (torch steps what has a gradient)."""
    specs = lambda out: [  # noqa: E731
        member(out, "a", ["epoch-unfreezer"], lr=0.1, seed=1, log_every=1, epochs=2),
        member(out, "b", ["epoch-unfreezer", "test-freezer", "stopper"], lr=0.05, seed=2, log_every=1, epochs=2),
    ]
    packed = run_pack(specs(tmp_path / "pack"))
    assert [r.status for r in packed] == ["finished", "stopped"], [r.summary.get("error") for r in packed]
    for p, s in zip(packed, [alone(spec, tmp_path / "alone", monkeypatch) for spec in specs(tmp_path / "alone")]):
        assert_trains_alike(p.record_dir, s.record_dir, updates_per_epoch=21)
        assert abs(p.summary["test/accuracy"] - s.summary["test/accuracy"]) <= 0.005
    results = run_pack([member(tmp_path, "s", ["step-freezer"]), member(tmp_path, "t", [], lr=0.2)])
    assert [r.status for r in results] == ["failed", "finished"] and results[0].summary["updates"] == 7
    assert "froze or unfroze 1.weight before the optimizer step" in results[0].summary["error"]
    assert summary(results[0].record_dir)["pack/refused"] is True


def test_batch_norm_members_train_and_keep_their_running_statistics_as_alone(tmp_path, plugins, monkeypatch):
    """A CNN with batch norm: each member normalizes by its own batch in training, updates
    its own running statistics (buffers, stacked like the weights) and evaluates with them;
    its checkpoint holds them as alone, and a member that leaves early keeps its own."""
    specs = lambda out: [  # noqa: E731
        member(out, "a", ["dropout"], {"dropout": {"p": 0.3}}, model="normnet", lr=0.2, seed=1, log_every=1,
               epochs=2, checkpoint_every="1epoch"),
        member(out, "b", ["dropout", "cosine"], model="normnet", lr=0.05, momentum=0.9, seed=2, log_every=1,
               epochs=2, checkpoint_every="1epoch"),
        member(out, "c", ["dropout", "stopper"], {"stopper": {"after": 1}}, model="normnet", lr=0.1, seed=3,
               log_every=1, epochs=2, checkpoint_every="1epoch"),
    ]
    packed = run_pack(specs(tmp_path / "pack"))
    assert [r.status for r in packed] == ["finished", "finished", "stopped"]
    single = [alone(spec, tmp_path / "alone", monkeypatch) for spec in specs(tmp_path / "alone")]
    for p, s in zip(packed, single):
        assert_trains_alike(p.record_dir, s.record_dir, updates_per_epoch=21)
        assert abs(p.summary["val/accuracy"] - s.summary["val/accuracy"]) <= 0.005
        mine, theirs = weights(p.record_dir), weights(s.record_dir)
        norms = sorted(name.rpartition(".")[0] for name in mine if name.endswith(".running_mean"))
        assert sorted(mine) == sorted(theirs) and len(norms) == 2
        for norm in norms:
            assert int(mine[f"{norm}.num_batches_tracked"]) == int(theirs[f"{norm}.num_batches_tracked"]) \
                == p.summary["updates"]
            for stat in ("running_mean", "running_var"):
                assert torch.allclose(mine[f"{norm}.{stat}"], theirs[f"{norm}.{stat}"], rtol=1e-3, atol=1e-5), \
                    (p.run_id, norm, stat)
    assert len({tuple(weights(p.record_dir)[f"{norms[0]}.running_mean"].tolist()) for p in packed}) == 3


# --- signals, kills and resume -------------------------------------------------------------


def in_child(function, log: Path) -> int:
    """``function()`` in a forked copy of this process (:func:`tests.driver.forked`, one thread),
    the signaller's count reset; its exit code, or -signal."""
    def run() -> None:
        Signaller.saves = 0
        function()

    return forked(run, log)


def kill_specs(out: Path, early: bool = False) -> list:
    """Three members; with ``early``, a fourth that stops after its first epoch (update 21)."""
    common = {"epochs": 2, "log_every": 4, "checkpoint_every": "10"}
    return [member(out, "a", ["signaller", "dropout"], lr=0.2, seed=1, **common),
            member(out, "b", ["signaller", "cosine", "dropout"], {"dropout": {"p": 0.3}}, lr=0.1, seed=2, **common),
            member(out, "c", ["signaller", "label-smoothing", "dropout"], lr=0.05, seed=1, momentum=0.9, **common)] \
        + ([member(out, "d", ["stopper", "dropout"], lr=0.3, **common)] if early else [])


def weights(record) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(record) / "checkpoint" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["update", "between-saves"])
def test_a_killed_pack_resumes_to_the_uninterrupted_result(tmp_path, plugins, monkeypatch, kill):
    """SIGKILL after update 35 (every member's checkpoint at 30; a fourth member had stopped
    at 21), or in the middle of the checkpoints at update 30 (two members saved, the third's
    last is at 21): nothing finished is lost and the resumed members end as the
    uninterrupted pack did."""
    early = kill == "update"
    assert in_child(lambda: run_pack(kill_specs(tmp_path / "base", early)), tmp_path / "child1") == 0
    monkeypatch.setenv(*(("PACK_TEST_SIGNAL_AT", "35") if kill == "update" else ("PACK_TEST_KILL_AT_SAVE", "12")))
    monkeypatch.setenv("PACK_TEST_SIGNAL", str(int(signal.SIGKILL)))
    assert in_child(lambda: run_pack(kill_specs(tmp_path / "cut", early)), tmp_path / "child2") == -signal.SIGKILL
    if early:  # finished before the kill: its record is complete
        cut, base = (summary(tmp_path / run / "d") for run in ("cut", "base"))
        assert cut["status"] == "stopped" and cut["updates"] == 21 and "test/accuracy" in cut
        assert {k: v for k, v in cut.items() if k not in VOLATILE} == \
            {k: v for k, v in base.items() if k not in VOLATILE}
        assert rows(tmp_path / "cut" / "d") == rows(tmp_path / "base" / "d")
    saved = {r: json.loads((tmp_path / "cut" / r / "checkpoint" / "loop.json").read_text())["update"] for r in "abc"}
    assert saved == ({"a": 30, "b": 30, "c": 30} if kill == "update" else {"a": 30, "b": 30, "c": 21})
    assert not any((tmp_path / "cut" / r / "summary.json").exists() for r in "abc")
    monkeypatch.delenv("PACK_TEST_SIGNAL_AT", raising=False)
    monkeypatch.delenv("PACK_TEST_KILL_AT_SAVE", raising=False)
    from hpplug.run_args import resumed_config

    catalog = discovery.discover()
    resumes = [(*resumed_config(catalog, tmp_path / "cut" / r), r, tmp_path / "cut" / r) for r in "abc"]
    if kill == "update":  # all three resume as one pack
        assert in_child(lambda: run_pack(resumes), tmp_path / "child3") == 0
    else:  # a member's checkpoint resumes alone too; the other two as a pack
        assert in_child(lambda: engine.run(*resumes[0][:2], show_progress=False, resume_dir=resumes[0][3]),
                        tmp_path / "child4") == 0
        assert in_child(lambda: run_pack(resumes[1:]), tmp_path / "child5") == 0
    for r in "abc":
        cut, base = tmp_path / "cut" / r, tmp_path / "base" / r
        assert summary(cut)["status"] == "finished"
        if kill == "update":  # the same pack, the same thread: bit for bit
            assert rows(cut) == rows(base)
            assert all(torch.equal(x, y) for x, y in zip(weights(cut).values(), weights(base).values()))
        else:
            assert_trains_alike(cut, base, updates_per_epoch=21)
            for x, y in zip(weights(cut).values(), weights(base).values()):
                torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_sigterm_checkpoints_every_member_and_a_damaged_one_fails_alone_on_resume(tmp_path, plugins, monkeypatch):
    monkeypatch.setenv("PACK_TEST_SIGNAL_AT", "13")
    monkeypatch.setenv("PACK_TEST_SIGNAL", str(int(signal.SIGTERM)))
    results = run_pack(kill_specs(tmp_path))
    monkeypatch.delenv("PACK_TEST_SIGNAL_AT")
    assert [(r.status, r.signum, r.summary["updates"]) for r in results] == [("interrupted", signal.SIGTERM, 13)] * 3
    for r in "abc":
        assert json.loads((tmp_path / r / "checkpoint" / "loop.json").read_text())["update"] == 13
    with open(tmp_path / "c" / "checkpoint" / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 8)
    from hpplug.run_args import resumed_config

    catalog = discovery.discover()
    resumes = [(*resumed_config(catalog, tmp_path / r), r, tmp_path / r) for r in "ab"]
    resumes.append((*kill_specs(tmp_path)[2][:2], "c", tmp_path / "c"))  # its checkpoint cannot be read
    a, b, c = run_pack(resumes)
    assert (a.status, b.status) == ("finished", "finished") and a.summary["updates"] == b.summary["updates"] == 42
    assert c.status == "failed" and "cannot be resumed" in c.summary["error"] and "\n" not in c.summary["error"]
