"""sam: one update equals a hand-written SAM step, whatever the optimizer and the accumulation."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpplug import HpplugError, Plugin, RunConfig, hookimpl
from hpplug.testing import read_metrics
from hpplug_methods.sam import SAM

TINY = {"mlp": {"hidden": 32}}


class Capture(Plugin):
    """Keeps the model as training starts, the first update's batches after every transform,
    and the model after the first update and at the end (the last instance hpplug built)."""

    last: Capture

    def __init__(self, **values) -> None:
        super().__init__(**values)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        Capture.last = self

    @hookimpl
    def hpplug_train_start(self, model: nn.Module) -> None:
        self.start = copy.deepcopy(model)

    @hookimpl(trylast=True)
    def hpplug_transform_batch(self, batch, progress) -> None:
        if batch.train and progress.update == 0:
            self.batches.append((batch.x.clone(), batch.y.clone()))

    @hookimpl
    def hpplug_after_optimizer_step(self, model: nn.Module, progress) -> None:
        if progress.update == 1:
            self.first = copy.deepcopy(model.state_dict())

    @hookimpl
    def hpplug_train_end(self, model: nn.Module) -> None:
        self.end = copy.deepcopy(model.state_dict())


class BatchNormMlp(Plugin):
    """Puts a batch norm after the mlp's hidden layer: SAM's second pass must not count in
    its running statistics."""

    @hookimpl
    def hpplug_adjust_model(self, model: nn.Module) -> None:
        model.insert(2, nn.BatchNorm1d(model[1].out_features))


def sam_by_hand(model: nn.Module, batches, optimizer: torch.optim.Optimizer, rho: float, adaptive: bool) -> None:
    """Foret et al.'s algorithm 1 (ASAM: Kwon et al. 2021) on the mean loss over ``batches``."""
    n = sum(len(y) for _, y in batches)

    def gradients() -> None:
        optimizer.zero_grad()
        for x, y in batches:
            (F.cross_entropy(model(x), y, reduction="sum") / n).backward()

    params = list(model.parameters())
    gradients()
    with torch.no_grad():
        t = [p.abs() if adaptive else torch.ones_like(p) for p in params]
        norm = torch.cat([(ti * p.grad).flatten() for ti, p in zip(t, params)]).norm()
        e = [rho * ti * ti * p.grad / norm for ti, p in zip(t, params)]
        for p, ei in zip(params, e):
            p += ei
    buffers = copy.deepcopy(list(model.buffers()))  # the statistics of the first pass only
    gradients()
    with torch.no_grad():
        for p, ei in zip(params, e):
            p -= ei
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
    optimizer.step()


CASES = {
    "sgd-momentum": (dict(optimizer="sgd", lr=0.1, momentum=0.9), {}, []),
    "adamw": (dict(optimizer="adamw", lr=0.003), {}, []),
    "asam": (dict(optimizer="sgd", lr=0.1), {"sam": {"rho": 0.5, "adaptive": True}}, []),
    "batch-norm": (dict(optimizer="sgd", lr=0.1), {}, ["bn-mlp"]),
}


@pytest.mark.parametrize("case", CASES)
def test_one_update_is_a_hand_written_sam_step(case, hpplug_register, hpplug_train):
    options, params, extra = CASES[case]
    hpplug_register("sam", SAM)
    hpplug_register("capture", Capture)
    hpplug_register("bn-mlp", BatchNormMlp)
    hpplug_train(extra + ["sam", "capture"], params={**TINY, **params}, **options)
    run = Capture.last
    sam = {"rho": 0.05, "adaptive": False, **params.get("sam", {})}
    model = copy.deepcopy(run.start)
    groups = dict(lr=options["lr"], momentum=options.get("momentum", 0.0))
    optimizer = torch.optim.SGD(model.parameters(), **groups) if options["optimizer"] == "sgd" else \
        torch.optim.AdamW(model.parameters(), lr=options["lr"])
    plain = copy.deepcopy(model)
    sam_by_hand(model, run.batches, optimizer, **sam)
    expected = model.state_dict()
    assert expected.keys() == run.first.keys()
    for name, value in expected.items():
        torch.testing.assert_close(run.first[name], value, rtol=0, atol=1e-6, msg=name)
    # ... and a plain step would not have passed: the test sees SAM's effect.
    opt = type(optimizer)(plain.parameters(), **(groups if options["optimizer"] == "sgd" else {"lr": options["lr"]}))
    opt.zero_grad()
    n = sum(len(y) for _, y in run.batches)
    for x, y in run.batches:
        (F.cross_entropy(plain(x), y, reduction="sum") / n).backward()
    opt.step()
    assert max((plain.state_dict()[k] - v).abs().max().item() for k, v in expected.items()) > 1e-4


def test_gradient_accumulation_trains_like_one_batch(hpplug_register, hpplug_train, tmp_path):
    """Two micro-batches of 32 per update give the updates of one batch of 64, second pass included."""
    hpplug_register("sam", SAM)
    hpplug_register("capture", Capture)
    hpplug_train(["sam", "capture"], params=TINY, batch_size=64, output_dir=str(tmp_path / "one"))
    one = Capture.last
    hpplug_train(["sam", "capture"], params=TINY, batch_size=32, grad_accum=2, output_dir=str(tmp_path / "two"))
    two = Capture.last
    assert len(two.batches) == 2 and torch.equal(torch.cat([x for x, _ in two.batches]), one.batches[0][0])
    for name, value in one.end.items():
        torch.testing.assert_close(two.end[name], value, rtol=0, atol=1e-5, msg=name)


def test_bf16_trains_like_full_precision(hpplug_register, hpplug_train, tmp_path):
    hpplug_register("sam", SAM)
    runs = [hpplug_train(["sam"], params=TINY, mixed_precision=precision, epochs=2, output_dir=str(tmp_path / precision))
            for precision in ("no", "bf16")]
    assert [r.status for r in runs] == ["finished", "finished"]
    full, bf16 = ([row["train/loss"] for row in read_metrics(r) if "val/accuracy" in row] for r in runs)
    assert all(map(math.isfinite, bf16)) and bf16[1] < bf16[0]
    assert bf16 == pytest.approx(full, abs=1e-2)


def test_fp16_is_refused_in_one_line():
    """Under fp16 the grad scaler unscales once per step: the second pass would stay scaled."""
    with pytest.raises(HpplugError, match=r"^sam cannot run under --mixed-precision fp16 .*use "
                                          r"--mixed-precision bf16 or no\)?$") as refused:
        SAM().hpplug_train_start(config=RunConfig(mixed_precision="fp16"))
    assert "\n" not in str(refused.value)
    SAM().hpplug_train_start(config=RunConfig(mixed_precision="bf16"))


def test_a_crash_and_resume_ends_like_the_uninterrupted_run(hpplug_register, hpplug_train, tmp_path):
    from tests.test_resume import CrashAt, assert_same_run, crash_and_resume

    hpplug_register("sam", SAM)
    hpplug_register("crash-at", CrashAt)
    options = dict(epochs=2, log_every=4, checkpoint_every="10", plugins=["crash-at", "sam"], params=TINY)
    baseline, cut = crash_and_resume(hpplug_train, tmp_path, options)
    assert_same_run(cut, baseline)


DRIVER = """
import sys
from hpplug import discovery
from hpplug.cli import main
from hpplug_methods.sam import SAM

discovery.register_local("sam", SAM)
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_two_processes_with_gradient_accumulation_train_like_one(hpplug_register, hpplug_train, tmp_path):
    """Both passes' gradients are averaged over the processes: each perturbs by the same e_w."""
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    hpplug_register("sam", SAM)
    one = hpplug_train(["sam"], params=TINY, batch_size=64, checkpoint_every="1epoch", output_dir=str(tmp_path / "one"))
    (tmp_path / "driver.py").write_text(DRIVER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(tmp_path / "driver.py"), "run", "--plugin", "sam", "--mlp.hidden", "32",
                           "--batch-size", "16", "--grad-accum", "2", "--epochs", "1", "--checkpoint-every", "1epoch",
                           "--wandb-mode", "disabled", "--output-dir", str(tmp_path / "two"),
                           "--data-root", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (two,) = (tmp_path / "two").iterdir()
    a, b = (load_file(Path(record) / "checkpoint" / "model.safetensors") for record in (one.record_dir, two))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)
