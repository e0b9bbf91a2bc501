"""A failing plugin is named, not dumped: whatever a plugin raises, or returns that it must
not, in any hook, ends the run ``failed`` with one line naming the plugin and the hook (exit
code 1), and the run's ``summary.json`` says the same. Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

import pytest
import torch

from hpplug import HpplugError, Plugin, hookimpl
from hpplug.discovery import HOOKS

QUICK = ("--epochs", "1", "--batch-size", "256", "--mlp.hidden", "32", "--log-every", "2", "--wandb-mode", "disabled")


def plugin_with(hook: str, body: Callable[..., Any]) -> type[Plugin]:
    """A plugin class implementing ``hook`` with ``body(self, **arguments)``."""
    args = HOOKS[hook]  # pluggy passes only the arguments a method names: name them all
    namespace: dict[str, Any] = {"body": body}
    exec(f"def impl(self, {', '.join(args)}):\n    return body(self, {', '.join(f'{a}={a}' for a in args)})",
         namespace)
    name = hook.title().replace("_", "")
    namespace["impl"].__qualname__ = f"{name}.impl"  # a method: pluggy then skips `self`
    return type(name, (Plugin,), {"impl": hookimpl(specname=hook)(namespace["impl"])})


def failed_record(sandbox: Any) -> dict[str, Any]:
    """The summary of the one run the case wrote (besides the earlier record)."""
    (record,) = set(sandbox.runs.iterdir()) - {sandbox.earlier}
    return json.loads((record / "summary.json").read_text())


def raise_(exc: BaseException) -> Callable[..., Any]:
    def body(self: Any, **_: Any) -> Any:
        raise exc
    return body


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_an_exception_in_any_hook_names_the_plugin_and_the_hook(refused, sandbox, hpplug_register, hook) -> None:
    hpplug_register("flaky", plugin_with(hook, raise_(ZeroDivisionError("division by zero\nsecond line"))))
    line = refused("run", "--plugin", "flaky", *QUICK, code=1, allowed=sandbox.runs).line
    problem = "ZeroDivisionError: division by zero second line"
    assert line == f"Error: plugin 'flaky' failed in {hook}: {problem}"
    summary = failed_record(sandbox)
    assert summary["status"] == "failed"
    assert (summary["error_plugin"], summary["error_hook"]) == ("flaky", hook)
    assert summary["error"] == f"plugin 'flaky' failed in {hook}: {problem}"


def test_an_exception_that_cannot_even_be_printed(refused, sandbox, hpplug_register) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    hpplug_register("weird", plugin_with("hpplug_lr_factor", raise_(Unprintable())))
    line = refused("run", "--plugin", "weird", *QUICK, code=1, allowed=sandbox.runs).line
    assert line == "Error: plugin 'weird' failed in hpplug_lr_factor: Unprintable: (its message cannot be printed)"


def test_sys_exit_in_a_hook_is_a_failure_too(refused, sandbox, hpplug_register) -> None:
    hpplug_register("quitter", plugin_with("hpplug_after_optimizer_step", raise_(SystemExit(3))))
    line = refused("run", "--plugin", "quitter", *QUICK, code=1, allowed=sandbox.runs).line
    assert line == "Error: plugin 'quitter' failed in hpplug_after_optimizer_step: SystemExit: 3"


class Wrapping(Plugin):
    """A new-style hook wrapper around the other plugins' LR factors."""

    @hookimpl(wrapper=True)
    def hpplug_lr_factor(self, progress):
        factors = yield
        if os.environ.get("WRAPPING_FAILS"):
            raise ValueError("wrapped badly")
        return factors


def test_a_hook_wrapper_is_named_and_names_what_it_wraps(refused, sandbox, hpplug_register, monkeypatch) -> None:
    hpplug_register("wrapping", Wrapping)
    hpplug_register("flaky", plugin_with("hpplug_lr_factor", raise_(ZeroDivisionError("division by zero"))))
    line = refused("run", "--plugin", "wrapping", "--plugin", "flaky", *QUICK, code=1, allowed=sandbox.runs).line
    assert line == "Error: plugin 'flaky' failed in hpplug_lr_factor: ZeroDivisionError: division by zero"
    monkeypatch.setenv("WRAPPING_FAILS", "1")
    line = refused("run", "--plugin", "wrapping", *QUICK, code=1, allowed=sandbox.runs).line
    assert line == "Error: plugin 'wrapping' failed in hpplug_lr_factor: ValueError: wrapped badly"


def test_a_plugin_that_cannot_be_constructed(refused, sandbox, hpplug_register) -> None:
    class Fragile(Plugin):
        def __init__(self, **values: Any) -> None:
            raise KeyError("missing-setting")

    hpplug_register("fragile", Fragile)
    line = refused("run", "--plugin", "fragile", *QUICK, code=1, allowed=sandbox.runs).line
    assert line == "Error: plugin 'fragile' failed in __init__: KeyError: 'missing-setting'"
    assert failed_record(sandbox)["error_hook"] == "__init__"


@pytest.mark.parametrize(("returned", "says"), [
    (["step", 3], "returned list ['step', 3]: state_dict must return a dict"),
    (RuntimeError("disk"), "RuntimeError: disk"),
])
def test_a_plugins_checkpoint_state(refused, sandbox, hpplug_register, returned, says) -> None:
    class Stateful(Plugin):
        def state_dict(self) -> Any:
            if isinstance(returned, Exception):
                raise returned
            return returned

    hpplug_register("stateful", Stateful)
    line = refused("run", "--plugin", "stateful", "--checkpoint-every", "1", *QUICK,
                   code=1, allowed=sandbox.runs).line
    assert line.startswith("Error: plugin 'stateful' failed in state_dict: ") and says in line
    assert failed_record(sandbox)["error_hook"] == "state_dict"


class Unreadable(Mapping):
    """A mapping that fails when read: the check itself must not crash on it."""

    def __getitem__(self, key: str) -> float:
        raise KeyError(key)

    def __iter__(self) -> Any:
        raise RuntimeError("no keys for you")

    def __len__(self) -> int:
        return 1


BAD_RESULTS = [
    ("hpplug_lr_factor", lambda self, **a: "0.5", "returned str '0.5', not a number"),
    ("hpplug_lr_factor", lambda self, **a: math.nan, "returned the LR factor nan: it must be a finite number >= 0"),
    ("hpplug_lr_factor", lambda self, **a: math.inf, "returned the LR factor inf"),
    ("hpplug_lr_factor", lambda self, **a: -0.5, "returned the LR factor -0.5"),
    ("hpplug_lr_factor", lambda self, **a: torch.tensor(0.5), "returned Tensor tensor(0.5"),
    ("hpplug_loss", lambda self, logits, targets, **_: 1.0, "returned float 1.0, not a tensor"),
    ("hpplug_loss", lambda self, logits, targets, **_: logits, "returned a loss of shape [256, 10]; expected one "
                                                           "value per sample, shape [256]"),
    ("hpplug_loss", lambda self, logits, targets, **_: logits.sum(), "returned a loss of shape []"),
    ("hpplug_loss", lambda self, logits, targets, **_: logits.detach().sum(1), "does not depend on the logits"),
    ("hpplug_loss", lambda self, logits, targets, **_: targets, "returned a torch.int64 loss"),
    ("hpplug_param_groups", lambda self, model, config: "all", "returned str 'all'"),
    ("hpplug_param_groups", lambda self, model, config: [{"lr": 0.1}], "returned group 0 = dict {'lr': 0.1}, "
                                                                      "not a dict with 'params'"),
    ("hpplug_param_groups", lambda self, model, config: [{"params": 3}], "returned group 0 with params int 3"),
    ("hpplug_param_groups", lambda self, model, config: [{"params": model.parameters()}] * 2,
     "in more than one group"),
    ("hpplug_param_groups", lambda self, model, config: [{"params": list(model.parameters()), "lr": "fast"}],
     "returned group 0 with lr = str 'fast': it must be a finite number >= 0"),
    ("hpplug_param_groups", lambda self, model, config: [{"params": list(model.parameters()),
                                                          "weight_decay": math.nan}], "weight_decay = float nan"),
    ("hpplug_epoch_end", lambda self, **a: [("extra", 1.0)], "returned list [('extra', 1.0)]: return a dict"),
    ("hpplug_epoch_end", lambda self, **a: {"extra": "high"}, "returned the metric 'extra' = str 'high', not a number"),
    ("hpplug_epoch_end", lambda self, **a: {"extra": torch.tensor(1.0)}, "not a number (use float(...) or .item())"),
    ("hpplug_transform_batch", lambda self, batch, progress: setattr(batch, "x", batch.x.tolist()),
     "left batch.x = list"),
    ("hpplug_transform_batch", lambda self, batch, progress: setattr(batch, "y", batch.y[:1]),
     "left a batch of inputs [256, 1, 8, 8] with labels [1]: one label per input"),
    ("hpplug_transform_batch", lambda self, batch, progress: setattr(batch, "x", batch.x.long()),
     "left batch.x as torch.int64; the model takes floating-point inputs"),
    ("hpplug_lr_factor", lambda self, progress, base_lr: setattr(progress, "update", 0),
     "FrozenInstanceError: cannot assign to field 'update'"),
    ("hpplug_after_optimizer_step", lambda self, model, progress: setattr(progress, "epoch", 99),
     "FrozenInstanceError: cannot assign to field 'epoch'"),
    ("hpplug_adjust_model", lambda self, model, config: setattr(config, "lr", 10.0),
     "changed the config it was given, which is read-only here (change it in hpplug_adjust_config)"),
    ("hpplug_epoch_end", lambda self, **a: Unreadable(), "returned Unreadable that cannot be read: "
                                                         "RuntimeError: no keys for you"),
    ("hpplug_adjust_config", lambda self, config: setattr(config, "lr", math.nan),
     "set config.lr = nan: nan is not a finite number"),
    ("hpplug_adjust_config", lambda self, config: setattr(config, "seed", -1),
     "set config.seed = -1: -1 is not in the range 0<=x<=4294967295"),
    ("hpplug_adjust_config", lambda self, config: setattr(config, "batch_size", 64.0),
     "set config.batch_size = float 64.0; expected int 64"),
]


@pytest.mark.parametrize(("hook", "body", "says"), BAD_RESULTS, ids=[f"{h}-{s[:30]}" for h, _, s in BAD_RESULTS])
def test_a_result_of_the_wrong_type_or_shape_names_the_plugin(refused, sandbox, hpplug_register, hook, body,
                                                              says) -> None:
    hpplug_register("sloppy", plugin_with(hook, body))
    line = refused("run", "--plugin", "sloppy", *QUICK, code=1, allowed=sandbox.runs).line
    assert line.startswith(f"Error: plugin 'sloppy' failed in {hook}: ") and says in line, line
    summary = failed_record(sandbox)
    assert (summary["status"], summary["error_plugin"], summary["error_hook"]) == ("failed", "sloppy", hook)


@pytest.mark.parametrize("key", ["test/accuracy", "test/loss", "train/loss", "lr", "epoch", "val/accuracy",
                                 "status", "step", "best/test/accuracy"])
def test_epoch_end_extras_may_not_replace_what_hpplug_logs(refused, sandbox, hpplug_register, key) -> None:
    hpplug_register("cheat", plugin_with("hpplug_epoch_end", lambda self, **a: {key: 1.0}))
    line = refused("run", "--plugin", "cheat", *QUICK, code=1, allowed=sandbox.runs).line
    assert f"plugin 'cheat' failed in hpplug_epoch_end: returned the metric {key!r}, which hpplug logs" in line
    summary = failed_record(sandbox)
    assert summary["error_plugin"] == "cheat" and summary.get("test/accuracy") != 1.0


@pytest.mark.parametrize("hook", ["hpplug_evaluation_end", "hpplug_epoch_end"])
def test_the_metrics_are_read_only_for_plugins(refused, sandbox, hpplug_register, hook) -> None:
    def overwrite(self: Any, metrics: Any, **_: Any) -> None:
        metrics["test/accuracy"] = 1.0

    hpplug_register("cheat", plugin_with(hook, overwrite))
    line = refused("run", "--plugin", "cheat", *QUICK, code=1, allowed=sandbox.runs).line
    assert line == (f"Error: plugin 'cheat' failed in {hook}: "
                    "TypeError: 'mappingproxy' object does not support item assignment")


def test_a_plugins_own_hpplug_error_stays_a_bad_input_line(refused, sandbox, hpplug_register) -> None:
    hpplug_register("picky", plugin_with("hpplug_adjust_config",
                                         raise_(HpplugError("--picky.level must be below --epochs"))))
    line = refused("run", "--plugin", "picky", *QUICK, code=2, allowed=sandbox.runs).line
    assert line == "Error: --picky.level must be below --epochs"
    assert failed_record(sandbox)["error"] == "--picky.level must be below --epochs"


def test_well_formed_results_train(hpplug_register, hpplug_train) -> None:
    """The checks refuse nothing a correct plugin does: a generator of params, numpy-like numbers."""

    class Correct(Plugin):
        @hookimpl
        def hpplug_param_groups(self, model):
            return [{"params": model.parameters(), "weight_decay": 0.0}]

        @hookimpl
        def hpplug_lr_factor(self, progress):
            return 1 if progress.update % 2 else 0.5

        @hookimpl
        def hpplug_epoch_end(self, metrics):
            return {"correct/seen": 1, "correct/flag": True}

    hpplug_register("correct", Correct)
    result = hpplug_train(["correct"])
    assert result.status == "finished" and result.summary["correct/seen"] == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(hpplug_cli, sandbox, hpplug_register, monkeypatch, how) -> None:
    hpplug_register("flaky", plugin_with("hpplug_lr_factor", raise_(ZeroDivisionError("division by zero"))))
    if how == "env":
        monkeypatch.setenv("HPPLUG_DEBUG", "1")
    code, _, err = hpplug_cli(*(["--debug"] if how == "flag" else []), "run", "--plugin", "flaky", *QUICK)
    assert code == 1
    assert "Traceback" in err and "raise exc" in err, "the plugin's own frame is shown"
    assert err.strip().splitlines()[-1] == ("Error: plugin 'flaky' failed in hpplug_lr_factor: "
                                            "ZeroDivisionError: division by zero")


def test_an_unexpected_error_is_one_line_with_a_hint(refused, monkeypatch) -> None:
    from hpplug import engine

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("internal state\nwent wrong")

    monkeypatch.setattr(engine, "run", crash)
    line = refused("run", *QUICK, code=1).line
    assert line == ("Error: unexpected RuntimeError: internal state went wrong; "
                    "rerun with `hpplug --debug ...` for the traceback")


def test_an_os_error_names_the_path_and_the_reason(refused, monkeypatch) -> None:
    def full(self: pathlib.Path, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", full)
    line = refused("run", *QUICK).line
    assert line.startswith("Error: cannot write runs/") and "No space left on device" in line


def test_a_plugin_printing_at_import_leaves_plugins_json_valid(tmp_path: Path) -> None:
    """A real third-party distribution found through its entry point (a dist-info folder)."""
    site = tmp_path / "site"
    (site / "hpplug_chatty").mkdir(parents=True)
    (site / "hpplug_chatty" / "__init__.py").write_text(textwrap.dedent('''
        import os, sys
        print("hello from hpplug_chatty")
        sys.__stdout__.write("straight to sys.__stdout__\\n")
        os.write(1, b"straight to file descriptor 1\\n")
        from hpplug import Plugin

        class Chatty(Plugin):
            print("defining Chatty")
        '''))
    info = site / "hpplug_chatty-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hpplug-chatty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hpplug]\nchatty = hpplug_chatty:Chatty\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "hpplug", "plugins", "--json"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["chatty"]["status"] == "active" and rows["chatty"]["distribution"] == "hpplug-chatty"
    for said in ("hello from hpplug_chatty", "defining Chatty", "straight to sys.__stdout__",
                 "straight to file descriptor 1"):
        assert said in proc.stderr
