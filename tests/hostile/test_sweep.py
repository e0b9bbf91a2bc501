"""``hpplug sweep`` against hostile input: a runner killed at its most dangerous instants,
damaged state and records on disk, bad values and names in the YAML, paths that try to
leave the sweep folder. Refusals go through the shared harness (exit 2, one ``Error:``
line, no traceback, nothing changed); kills are real SIGKILLs of a real runner process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import click
import psutil
import pytest
import yaml

from hpplug.cli import run_command
from hpplug.config import RunConfig
from hpplug.discovery import discover
from hpplug.errors import HpplugError
from hpplug.run_args import build_config
from hpplug.sweep.checks import problems
from hpplug.sweep.runner import Runner
from hpplug.sweep.spec import load
from hpplug.sweep.state import Trial
from hpplug.sweep.wandb_engine import suggest, sweep_run

HEAD = 'metric: {name: val/accuracy, goal: maximize}\ncommand: ["${env}", hpplug, run, "${args}"]\n'
GOOD = HEAD + "method: random\nparameters: {lr: {values: [0.1, 0.2]}}\n"


@pytest.fixture
def user_file(sandbox: Any) -> Callable[..., str]:
    """Write a file of the user's into the sandbox; it becomes part of what must not change."""

    def write(name: str, content: str | bytes) -> str:
        path = sandbox.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        sandbox.__post_init__()  # snapshot again: the case starts from here
        return name

    return write


# --- 3. bad values, refused before any trial starts ----------------------------------------------

REFUSED_YAML = [
    ("nan-value", "method: grid\nparameters: {lr: {value: .nan}}", "parameters.lr.value: nan is not a finite number"),
    ("inf-in-values", "method: grid\nparameters: {lr: {values: [0.1, .inf]}}", "lr.values[1]: inf is not a finite"),
    ("minus-inf-min", "method: random\nparameters: {lr: {min: -.inf, max: 1.0}}", "lr.min: -inf is not a finite"),
    ("nan-target", "method: random\nmetric: {name: test/accuracy, goal: maximize, target: .nan}\n"
                   "parameters: {lr: {value: 0.1}}", "metric.target: nan is not a finite number"),
    ("nan-hyperband-eta", "method: random\nparameters: {lr: {value: 0.1}}\nearly_terminate: "
                          "{type: hyperband, min_iter: 1, eta: .nan}", "early_terminate.eta: nan"),
    ("values-not-a-list", "method: grid\nparameters: {lr: {values: 5}}", "lr.values: must be a non-empty list"),
    ("list-for-a-scalar", "method: grid\nparameters: {lr: {value: [1, 2]}}", "--lr takes one value, not a list"),
    ("bogus-distribution", "method: random\nparameters: {lr: {distribution: bogus, min: 0.1, max: 1.0}}",
     "'bogus' is not one of W&B's distributions"),
    ("min-above-max", "method: random\nparameters: {lr: {min: 1.0, max: 0.1}}", "min 1.0 must be less than max 0.1"),
    ("block-is-a-string", "method: random\nparameters: {lr: '0.1'}", "parameters.lr: must be a mapping"),
    ("misspelled-key", "method: random\nparamters: {lr: {value: 0.1}}", "did you mean 'parameters'?"),
    ("unknown-method", "method: hyper\nparameters: {lr: {value: 0.1}}", "method: 'hyper' is not one of grid"),
    ("project-with-slash", "method: random\nproject: team/hpplug\nparameters: {lr: {value: 0.1}}",
     "project: 'team/hpplug' is not a valid W&B name"),
    ("name-with-slash", "method: random\nname: ../../x\nparameters: {lr: {value: 0.1}}", "cannot contain / or"),
    ("float-range-for-an-int", "method: random\nparameters: {epochs: {distribution: uniform, min: 1, max: 3}}",
     "parameters.epochs: 1.0:"),
    ("output-dir-parameter", "method: grid\nparameters: {output_dir: {value: /tmp/elsewhere}}",
     "hpplug sweep sets --output-dir"),
    ("negative-batch-range", "method: random\nparameters: {batch_size: {min: -5, max: 5}}", "parameters.batch_size: -5"),
]


@pytest.mark.parametrize("body, expected", [c[1:] for c in REFUSED_YAML], ids=[c[0] for c in REFUSED_YAML])
def test_bad_values_are_one_line(refused: Callable[..., Any], user_file: Callable[..., str],
                                 body: str, expected: str) -> None:
    name = user_file("s.yaml", HEAD + body + "\n")
    line = refused("sweep", name, "--dir", "sw").line
    assert line.startswith(f"Error: {name} cannot run as a sweep: ") and expected in line, line


@pytest.mark.parametrize("value, expected", [("0", "0 is not in the range x>=1"), ("-1", "-1 is not in the range"),
                                             ("four", "'four' is not a valid integer")], ids=["zero", "negative", "text"])
def test_bad_pack_sizes_are_one_line(refused: Callable[..., Any], user_file: Callable[..., str], value: str,
                                     expected: str) -> None:
    name = user_file("s.yaml", HEAD + "method: grid\nparameters: {lr: {value: 0.1}}\n")
    for given in ([f"--pack={value}"], ["--pack", value]):
        line = refused("sweep", name, "--dir", "sw", *given).line
        assert "--pack" in line and expected in line, line


@pytest.mark.parametrize("content, expected", [
    ("method: [", "not valid YAML"),
    ("- a list\n- of things\n", "must be a YAML mapping"),
    (b"method: grid\n\xff\xfe\n", "not UTF-8 text"),
    ("a: &a [*a]\n", "nested more than 32 levels deep"),
    ("".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 10)}]\n" for i in range(9)),
     "more than 100,000 values"),  # a billion values by aliases: refused while counting
], ids=["syntax", "not-a-mapping", "not-utf8", "recursive-alias", "alias-bomb"])
def test_unreadable_yaml_is_one_line(refused: Callable[..., Any], user_file: Callable[..., str],
                                     content: str | bytes, expected: str) -> None:
    name = user_file("s.yaml", content)
    assert expected in refused("sweep", name, "--dry-run").line


def test_missing_or_folder_yaml(refused: Callable[..., Any], sandbox: Any) -> None:
    assert "sweep file nope.yaml does not exist" in refused("sweep", "nope.yaml").line
    assert "is a directory" in refused("sweep", "runs").line


GRID_15 = {"mlp.hidden": range(1, 11), "epochs": range(1, 11), "batch_size": range(1, 11), "seed": range(10),
           "grad_accum": range(1, 11), "log_every": range(1, 11), "eval_batch_size": range(1, 11),
           "lr": [x / 10 for x in range(1, 11)], "momentum": [x / 10 for x in range(10)],
           "dropout.p": [x / 10 for x in range(10)], "label-smoothing.smoothing": [x / 10 for x in range(10)],
           "weight-decay.weight_decay": [x / 10 for x in range(10)], "cosine.eta_min": [x / 10 for x in range(10)],
           "cosine.t_max": range(1, 11), "crop.padding": range(10)}


def test_a_grid_of_10_to_the_15_is_counted_not_listed(refused: Callable[..., Any], user_file: Callable[..., str]) -> None:
    parameters = {k: {"values": list(v)} for k, v in GRID_15.items()}
    parameters["plugin"] = {"value": ["cosine", "dropout", "label-smoothing", "weight-decay", "crop"]}
    text = HEAD + yaml.safe_dump({"method": "grid", "parameters": parameters})
    name = user_file("grid.yaml", text)
    spec, _ = load(name)
    started = time.perf_counter()
    (found,) = problems(spec, discover())
    assert time.perf_counter() - started < 10.0  # W&B's grid code would list 10**15 points here
    assert "grid search over 1,000,000,000,000,000 points" in found
    for extra in ([], ["--dry-run"]):
        assert "1,000,000,000,000,000 points" in refused("sweep", name, *extra).line


# --- 5. hpplug run's own validation decides -----------------------------------------------------


def run_refuses(name: str, value: Any) -> bool:
    """Whether ``hpplug run --NAME=VALUE`` is refused before training (its options, its config)."""
    catalog = discover()
    try:
        ctx = run_command(catalog).make_context("run", [f"--{name}={value}"])
        core = {k: v for k, v in ctx.params.items() if k in RunConfig.field_names()}
        build_config(catalog, [], {}, core)
    except (click.ClickException, HpplugError):
        return True
    return False


@pytest.mark.parametrize("name, value", [("seed", -1), ("seed", 2**32), ("seed", 7), ("mlp.hidden", 10**12),
                                         ("batch_size", 0), ("eval_batch_size", 10**15), ("lr", 0), ("epochs", 0)])
def test_what_hpplug_run_refuses_the_sweep_refuses(refused: Callable[..., Any], user_file: Callable[..., str],
                                                   hpplug_cli: Callable[..., Any], name: str, value: Any) -> None:
    path = user_file("s.yaml", HEAD + f"method: grid\nparameters: {{{name}: {{values: [{value}]}}}}\n")
    if run_refuses(name, value):
        assert f"parameters.{name}: {value}:" in refused("sweep", path, "--dir", "sw").line
    else:
        code, out, err = hpplug_cli("sweep", path, "--dir", "sw", "--dry-run")
        assert code == 0 and f"--{name}={value}" in out, err


# --- 4. names that become paths ----------------------------------------------------------------


def test_dir_never_leads_outside(refused: Callable[..., Any], user_file: Callable[..., str]) -> None:
    name = user_file("s.yaml", GOOD)
    assert "without '..'" in refused("sweep", name, "--dir", "../escape").line
    assert "without '..'" in refused("sweep", name, "--dir", "sw/../../escape").line
    # an existing folder that is not a sweep's: the sweep would mix its files with the user's
    assert "holds other files" in refused("sweep", name, "--dir", ".").line
    assert "holds other files" in refused("sweep", name, "--dir", "runs").line
    assert "is a file" in refused("sweep", name, "--dir", "notes.txt").line


def test_template_never_overwrites(refused: Callable[..., Any]) -> None:
    assert "exists" in refused("sweep", "--template", "-o", "notes.txt").line
    assert "cannot write it" in refused("sweep", "--template", "-o", "no/such/folder/t.yaml").line


def test_a_command_that_moves_the_records_is_refused(refused: Callable[..., Any], user_file: Callable[..., str]) -> None:
    body = 'method: random\nparameters: {lr: {value: 0.1}}\ncommand: ["${env}", hpplug, run, "${args}", --output-dir=/tmp]\n'
    name = user_file("s.yaml", HEAD.replace('command: ["${env}", hpplug, run, "${args}"]\n', "") + body)
    assert "hpplug sweep sets --output-dir" in refused("sweep", name).line


# --- 2. damaged state on disk -------------------------------------------------------------------


def saved_state(sandbox: Any, text: str = GOOD, trials: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A real sweep.json for sandbox/s.yaml in sandbox/sw, with these trials."""
    (sandbox.root / "s.yaml").write_text(text)
    spec, _ = load(sandbox.root / "s.yaml")
    runner = Runner(spec, sandbox.root / "sw")
    runner.load()
    runner.state.trials = [Trial.from_json(t, i + 1, spec, runner.runs_dir) for i, t in enumerate(trials or [])]
    runner.save()
    return json.loads((sandbox.root / "sw" / "sweep.json").read_text())


def finished_trial(number: int, run_id: str, lr: float = 0.1) -> dict[str, Any]:
    return {"number": number, "id": run_id, "status": "finished", "config": {"lr": {"value": lr}},
            "values": {"lr": lr}, "record": f"/elsewhere/{run_id}", "attempts": 1, "metric": 0.5,
            "pid": 123, "pid_started": 1.0, "launched": 1.0, "ended": 2.0, "exit_code": 0}


DAMAGE = [
    ("torn", lambda text, state: text[: len(text) // 2], "not valid JSON"),
    ("zero-bytes", lambda text, state: "", "not valid JSON"),
    ("not-an-object", lambda text, state: "[1, 2]", "not a JSON object"),
    ("trials-not-a-list", lambda text, state: json.dumps({**state, "trials": {"a": 1}}), "trials is not a list"),
    ("unknown-status", lambda text, state: text.replace('"finished"', '"zombie"'), "status 'zombie' is not one of"),
    ("wrong-type", lambda text, state: text.replace('"attempts": 1', '"attempts": "1"'), "attempts '1' has the wrong type"),
    ("alone-not-text", lambda text, state: json.dumps({**state, "trials": [{**state["trials"][0], "alone": 7}]}),
     "alone 7 has the wrong type"),
    ("id-with-path", lambda text, state: text.replace("aaaa0001", "../../escape"), "is not a plain name"),
    ("absolute-id", lambda text, state: text.replace("aaaa0001", "/tmp/escape"), "is not a plain name"),
    ("sweep-id-path", lambda text, state: json.dumps({**state, "sweep_id": "a/../b"}), "sweep_id 'a/../b'"),
    ("foreign-yaml", lambda text, state: json.dumps({**state, "config": {"method": "grid"}}), "different YAML"),
    ("unknown-parameter", lambda text, state: json.dumps({**state, "trials": [
        {**state["trials"][0], "config": {"resume": {"value": "/"}}, "values": {"resume": "/"}}]}), "does not have"),
]


@pytest.mark.parametrize("damage, expected", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_damaged_state_is_one_line(refused: Callable[..., Any], sandbox: Any, damage: Callable[[str, Any], str],
                                   expected: str, dry_run: bool) -> None:
    state = saved_state(sandbox, trials=[finished_trial(1, "aaaa0001")])
    path = sandbox.root / "sw" / "sweep.json"
    path.write_text(damage(path.read_text(), state))
    sandbox.__post_init__()
    line = refused("sweep", "s.yaml", "--dir", "sw", *(["--dry-run"] if dry_run else [])).line
    assert expected in line, line  # and nothing was written: not even the lock file


def test_damaged_records_are_tolerated(sandbox: Any, hpplug_cli: Callable[..., Any]) -> None:
    """A torn last line of metrics.jsonl, an empty or non-object summary.json, bytes that are
    not UTF-8: read around, never a traceback."""
    text = HEAD + "method: bayes\nrun_cap: 2\nparameters: {lr: {min: 0.01, max: 1.0}}\n"
    saved_state(sandbox, text, trials=[finished_trial(1, "aaaa0001", 0.1), finished_trial(2, "aaaa0002", 0.5)])
    one, two = sandbox.root / "sw" / "runs" / "aaaa0001", sandbox.root / "sw" / "runs" / "aaaa0002"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    rows = [{"epoch": 1, "test/accuracy": 0.5}, {"epoch": 2, "test/accuracy": 0.7}]
    (one / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 3, "test/acc')
    (one / "summary.json").write_text("")
    (two / "metrics.jsonl").write_bytes(b'5\n[1]\n{"epoch": 1, "test/accuracy": true}\n\xff\xfe\n')
    (two / "summary.json").write_text("[1, 2]")

    spec, _ = load(sandbox.root / "s.yaml")
    runner = Runner(spec, sandbox.root / "sw")
    runner.load()
    assert [t.record for t in runner.trials] == [str(one), str(two)]  # never the path in the file
    assert sweep_run(runner.trials[0]).metric_history("test/accuracy") == [0.5, 0.7]
    assert sweep_run(runner.trials[1]).summary_metrics == {}
    runner.trials[1].status = "running"
    assert suggest(spec, runner.state) is not None  # W&B's engine is fed what could be read

    code, out, err = hpplug_cli("sweep", "s.yaml", "--dir", "sw")  # run_cap reached: the report
    assert code == 0 and "Traceback" not in err and "sweep complete: run_cap 2 reached" in out, err


# --- 1. a runner killed at its most dangerous instants ---------------------------------------------

# Runs `hpplug sweep` and SIGKILLs itself at an exact instant: before or right after it starts a
# trial's process, or while it writes the sweep.json that records a trial as starting. Every
# trial process it starts is appended to $SWEEP_TEST_LAUNCHES.
DRIVER = '''
import os, signal, subprocess, sys
KILL, LAUNCHES = os.environ.get("SWEEP_TEST_KILL", ""), os.environ["SWEEP_TEST_LAUNCHES"]
Popen, replace = subprocess.Popen, os.replace

class Killing(Popen):
    def __init__(self, args, *rest, **kwargs):
        trial = (kwargs.get("env") or {}).get("WANDB_RUN_ID")
        if trial and KILL == "before-launch":
            os.kill(os.getpid(), signal.SIGKILL)
        super().__init__(args, *rest, **kwargs)
        if trial:
            with open(LAUNCHES, "a") as f:
                f.write(trial + "\\n")
            if KILL == "after-launch":
                os.kill(os.getpid(), signal.SIGKILL)

def killing_replace(src, dst, *rest, **kwargs):
    if KILL == "writing-start" and str(dst).endswith("sweep.json"):  # the write that records a start
        old = open(dst).read() if os.path.exists(dst) else ""
        if '"starting"' in open(src).read() and '"starting"' not in old:
            os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst, *rest, **kwargs)

subprocess.Popen, os.replace = Killing, killing_replace
from hpplug.cli import main
main(sys.argv[1:])
'''


class Sweep:
    """One sweep folder driven by runner processes that may be told to die."""

    def __init__(self, tmp_path: Path, epochs: list[int]) -> None:
        self.root, self.dir, self.grid = tmp_path, tmp_path / "sw", epochs
        self.launches = tmp_path / "launches.txt"
        (tmp_path / "driver.py").write_text(DRIVER)
        (tmp_path / "s.yaml").write_text(HEAD + yaml.safe_dump({"method": "grid", "parameters": {
            "wandb_mode": {"value": "disabled"}, "epochs": {"values": epochs}}}))
        self.env = {**os.environ, "SWEEP_TEST_LAUNCHES": str(self.launches), "OMP_NUM_THREADS": "1",
                    "PYTHONUNBUFFERED": "1"}

    def argv(self) -> list[str]:
        return [sys.executable, str(self.root / "driver.py"), "sweep", "s.yaml", "--dir", "sw"]

    def run(self, kill: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(), cwd=self.root, env={**self.env, "SWEEP_TEST_KILL": kill},
                              capture_output=True, text=True, timeout=300)

    def state(self) -> dict[str, Any]:
        return json.loads((self.dir / "sweep.json").read_text())

    def launched(self) -> list[str]:
        return self.launches.read_text().split() if self.launches.exists() else []

    def assert_each_ran_once(self) -> list[dict[str, Any]]:
        trials = self.state()["trials"]
        ids = [t["id"] for t in trials]
        assert sorted(self.launched()) == sorted(ids)  # every trial's process started exactly once
        assert sorted(os.listdir(self.dir / "runs")) == sorted(ids)  # one record each, no stray attempt
        for t in trials:
            rows = [json.loads(r) for r in (self.dir / "runs" / t["id"] / "metrics.jsonl").read_text().splitlines()]
            assert [r["epoch"] for r in rows if "val/accuracy" in r] == list(range(1, t["values"]["epochs"] + 1))
            assert t["status"] == "finished"
        assert sorted(t["values"]["epochs"] for t in trials) == sorted(self.grid)
        return trials


def trial_process(run_id: str) -> psutil.Process:
    """The trial's process, found by its environment (the runner never recorded its pid)."""
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("WANDB_RUN_ID") == run_id and os.getpgid(proc.pid) == proc.pid:
                return proc
        except (psutil.Error, OSError):
            continue
    raise AssertionError(f"no process runs trial {run_id}")


@pytest.mark.slow
def test_runner_killed_right_after_starting_a_trial(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, [1, 40])
    out = sweep.run(kill="after-launch")  # trial 1's process exists; its pid was never recorded
    assert out.returncode == -signal.SIGKILL, out.stderr
    (first,) = sweep.state()["trials"]
    assert first["status"] == "starting" and first["pid"] is None and sweep.launched() == [first["id"]]

    summary = sweep.dir / "runs" / first["id"] / "summary.json"
    deadline = time.monotonic() + 240
    while not (summary.exists() and '"finished"' in summary.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)  # trial 1 ends while no runner is alive

    out = sweep.run(kill="after-launch")  # collects trial 1, starts trial 2, dies
    assert out.returncode == -signal.SIGKILL and "trial 1" in out.stdout and "resuming" not in out.stdout
    first, second = sweep.state()["trials"]
    assert first["status"] == "finished" and second["status"] == "starting"

    trainer = trial_process(second["id"])
    os.killpg(trainer.pid, signal.SIGSTOP)  # so that the next runner surely finds it alive
    proc = subprocess.Popen(sweep.argv(), cwd=sweep.root, env=sweep.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("still running" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(trainer.pid, signal.SIGCONT)
    assert proc.wait(timeout=300) == 0
    reader.join(timeout=10)
    assert f"trial 2 {second['id']}: still running (pid {trainer.pid}); waiting for it\n" in lines, lines
    sweep.assert_each_ran_once()


@pytest.mark.slow
def test_runner_killed_before_the_start_and_while_recording_it(tmp_path: Path) -> None:
    sweep = Sweep(tmp_path, [2])
    out = sweep.run(kill="before-launch")  # recorded as starting; no process was started
    assert out.returncode == -signal.SIGKILL, out.stderr
    (trial,) = sweep.state()["trials"]
    assert trial["status"] == "starting" and sweep.launched() == []

    out = sweep.run(kill="writing-start")  # killed between writing the new state and renaming it
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert [p.name for p in sweep.dir.glob(".sweep.json.*.tmp")]  # the half-done write is left over...
    assert sweep.state()["trials"][0]["status"] == "interrupted"  # ...and the state before it is intact
    assert sweep.launched() == []

    out = sweep.run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"trial 1 {trial['id']}: starting again" in out.stdout
    (done,) = sweep.assert_each_ran_once()
    assert done["id"] == trial["id"]


@pytest.mark.slow
def test_trial_killed_before_its_first_checkpoint_starts_again_keeping_its_rows(tmp_path: Path) -> None:
    """The runner and then its trial die before any checkpoint: the next runner starts the
    trial again under the same id; the first attempt's rows stay in its record's
    attempts/1/, and the record's own rows are the new attempt's, each epoch once."""
    sweep = Sweep(tmp_path, [12])
    out = sweep.run(kill="after-launch")
    assert out.returncode == -signal.SIGKILL, out.stderr
    (trial,) = sweep.state()["trials"]
    folder = sweep.dir / "runs" / trial["id"]
    trainer = trial_process(trial["id"])
    metrics, deadline = folder / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.exists() and b"val/accuracy" in metrics.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.05)  # until its first epoch is logged
    os.killpg(trainer.pid, signal.SIGKILL)  # no checkpoint, no summary
    trainer.wait(timeout=30)
    earlier = (folder / "metrics.jsonl").read_bytes()
    assert not (folder / "checkpoint").exists() and not (folder / "summary.json").exists()

    out = sweep.run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"trial 1 {trial['id']}: starting again (attempt 2)" in out.stdout
    assert sweep.launched() == [trial["id"]] * 2 and os.listdir(sweep.dir / "runs") == [trial["id"]]
    assert (folder / "attempts" / "1" / "metrics.jsonl").read_bytes() == earlier  # nothing lost
    rows = [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "val/accuracy" in r] == list(range(1, 13))  # not mixed, not doubled
    (done,) = sweep.state()["trials"]
    assert done["status"] == "finished" and done["attempts"] == 2
