"""``hpplug sweep --pack K``: trials trained together in one process, each a complete run.

Real sweeps on digits: real pack processes (``python -m hpplug.sweep.worker``), real offline
W&B runs read back with ``hpplug.wandb_file``, a real SIGKILL of the runner and its pack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from hpplug import checkpoint_files as checkpoint
from hpplug.sweep.command import sweep_command
from hpplug.wandb_file import find_run_files, read_run

COMMAND = ["${env}", "hpplug", "run", "${args}"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)


def write_yaml(path: Path, parameters: dict[str, Any], **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"method": "grid", "metric": {"name": "val/accuracy", "goal": "maximize"},
                                    "command": COMMAND, **extra, "parameters": parameters}, sort_keys=False))
    return path


def sweep(path: Path, folder: str, *options: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Run the sweep in this process (its trials and packs are subprocesses)."""
    out = CliRunner().invoke(sweep_command, [str(path), "--dir", folder, *options])
    assert out.exit_code == 0, out.output
    return out.output.splitlines(), json.loads((Path(folder) / "sweep.json").read_text())["trials"]


def summary(trial: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(trial["record"]) / "summary.json").read_text())


@pytest.mark.slow
def test_a_packed_grid_gives_each_trial_its_run_and_the_unpacked_result(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "g.yaml", {"lr": {"values": [0.05, 0.3]}, "epochs": {"value": 1},
                                           "seed": {"values": [1, 2]}, "wandb_mode": {"value": "offline"}})
    lines, packed = sweep(path, "packed", "--pack", "4", "--parallel", "2")
    _, alone = sweep(path, "alone", "--parallel", "2")

    assert [t["pack"] for t in packed] == [1] * 4 and all(t["pack"] is None for t in alone)
    assert [t["values"] for t in packed] == [t["values"] for t in alone]
    for p, a in zip(packed, alone):
        assert p["status"] == a["status"] == "finished" and p["attempts"] == 1
        assert abs(p["metric"] - a["metric"]) <= 0.005
        assert summary(p)["val/accuracy"] == p["metric"] and summary(p)["pack/size"] == 4
        assert f"trial {p['number']} {p['id']} started in pack 1 (4 trials)" in "\n".join(lines)
        assert sum(line.startswith(f"trial {p['number']} {p['id']} finished ") for line in lines) == 1
    # each trial its own offline W&B run: id = trial id, group = sweep id, the keys of an unpacked one
    runs = {name: {r.run_id: r for r in map(read_run, find_run_files(Path(name) / "runs"))}
            for name in ("packed", "alone")}
    sweep_id = json.loads(Path("packed/sweep.json").read_text())["sweep_id"]
    assert set(runs["packed"]) == {t["id"] for t in packed}
    for p, a in zip(packed, alone):
        mine, theirs = runs["packed"][p["id"]], runs["alone"][a["id"]]
        assert mine.group == theirs.group == sweep_id and mine.exit_code == 0
        assert set(mine.config) == set(theirs.config) and mine.config["lr"] == p["values"]["lr"]
        assert {k for row in mine.history for k in row} == {k for row in theirs.history for k in row}


@pytest.mark.slow
def test_hyperband_stops_one_member_of_a_pack_and_the_others_finish(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "hb.yaml", {"epochs": {"value": 40}, "batch_size": {"value": 32},
                                             "wandb_mode": {"value": "disabled"},
                                             "lr": {"values": [0.1, 0.2, 0.0001]}},
                      early_terminate={"type": "hyperband", "max_iter": 10, "s": 1, "eta": 2})
    lines, trials = sweep(path, "sw", "--pack", "3")
    assert [t["status"] for t in trials] == ["finished", "finished", "stopped"], "\n".join(lines)
    assert {t["pack"] for t in trials} == {1}
    good, bad = summary(trials[0]), summary(trials[2])
    assert good["status"] == "finished" and good["epochs_done"] == 40
    assert bad["status"] == "stopped" and "stop-request" in bad["stop_reason"] and bad["epochs_done"] < 40
    assert sum("stopping early (hyperband)" in line for line in lines) == 1
    assert not (Path(trials[2]["record"]) / "stop-request").exists()


@pytest.mark.slow
def test_a_killed_runner_and_pack_lose_no_finished_trial_and_resume_the_rest(tmp_path: Path) -> None:
    """Pack 1 finishes; pack 2 is SIGKILLed with its runner mid-training; the rerun leaves
    pack 1 alone and resumes pack 2's trials from their checkpoints, each once more."""
    path = write_yaml(tmp_path / "k.yaml", {"epochs": {"value": 30}, "checkpoint_every": {"value": "10"},
                                            "wandb_mode": {"value": "disabled"},
                                            "lr": {"values": [0.05, 0.1, 0.2, 0.3]}})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runner = subprocess.Popen([sys.executable, "-m", "hpplug", "sweep", str(path), "--dir", "sw", "--pack", "2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            trials = json.loads(Path("sw/sweep.json").read_text())["trials"]
        except (OSError, ValueError):
            trials = []
        second = [t for t in trials if t.get("pack") == 2 and t["status"] == "running"]
        if len(second) == 2 and all(checkpoint.has_checkpoint(Path(t["record"])) for t in second):
            break
        time.sleep(0.05)
    else:
        runner.kill()
        pytest.fail(f"pack 2 never checkpointed: {runner.communicate()[0].decode()}")
    os.kill(second[0]["pid"], signal.SIGKILL)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    first = [t for t in trials if t["pack"] == 1]
    assert [t["status"] for t in first] == ["finished"] * 2
    kept = {t["id"]: (Path(t["record"]) / "summary.json").read_bytes() for t in first}

    lines, after = sweep(path, "sw", "--pack", "2")
    text = "\n".join(lines)
    assert [t["status"] for t in after] == ["finished"] * 4, text
    for t in after[:2]:  # untouched
        assert t["attempts"] == 1 and (Path(t["record"]) / "summary.json").read_bytes() == kept[t["id"]]
        assert t["id"] not in text.split("#  trial")[0]
    # Resumed once from their checkpoints (the same run, not a new one): together when both
    # saved the same update, else each alone (the kill can land between the two saves).
    together = all(t["pack"] == 3 for t in after[2:])
    assert together or ("start from different updates" in text and all(t["pack"] is None for t in after[2:])), text
    for t in after[2:]:
        assert t["attempts"] == 2
        assert f"trial {t['number']} {t['id']}: resuming from its checkpoint (attempt 2)" + \
            (", in pack 3 (2 trials)" if together else "") in text
        assert not (Path(t["record"]) / "attempts").exists() and summary(t)["epochs_done"] == 30


@pytest.mark.slow
def test_a_trial_with_a_plugin_that_does_not_pack_runs_alone_beside_a_pack(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "m.yaml", {"epochs": {"value": 1}, "wandb_mode": {"value": "disabled"},
                                            "plugin": {"values": [[], ["sam"]]}, "lr": {"values": [0.1, 0.2]}})
    lines, trials = sweep(path, "sw", "--pack", "4", "--parallel", "2")
    assert [t["status"] for t in trials] == ["finished"] * 4
    packed = [t for t in trials if t["pack"] is not None]
    assert [t["values"]["plugin"] for t in packed] == [[], []] and {t["pack"] for t in packed} == {1}
    for t in trials:
        if t["pack"] is None:
            assert t["values"]["plugin"] == ["sam"] and (Path("sw/logs") / f"{t['id']}.log").exists()
            assert any(line.startswith(f"trial {t['number']} {t['id']}: runs alone (plugin sam") for line in lines)


@pytest.mark.parametrize("plugins", ["imported", "metadata cache"])
def test_trials_pack_by_what_they_share_and_the_rest_say_why_they_run_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugins: str) -> None:
    """The grouping reads each trial's options as hpplug run does (in this process: fast), in
    the environment a pack process has: the runner's own WANDB_RUN_ID is not a member's. The
    runner groups from the plugin metadata cache: the same packs as from the classes."""
    monkeypatch.setenv("WANDB_RUN_ID", "")  # `hpplug run` alone would refuse it
    from hpplug import plugin_cache
    from hpplug.manager import discover
    from hpplug.sweep.packing import groups
    from hpplug.sweep.spec import load
    from hpplug.sweep.state import Trial
    from hpplug.sweep.trials import command

    spec, _ = load(write_yaml(tmp_path / "p.yaml", {"lr": {"values": [0.1]}}))
    runs = tmp_path / "runs"

    def trial(number: int, **values: Any) -> Trial:
        return Trial(number=number, id=f"t{number}", config={k: {"value": v} for k, v in values.items()},
                     values=values, record=str(runs / f"t{number}"))

    trials = [trial(1, lr=0.1), trial(2, lr=0.2, seed=3), trial(3, lr=0.1, batch_size=32), trial(4, plugin=["sam"]),
              trial(5, lr="fast"), trial(6, lr=0.3, plugin=["cosine"]), trial(7, custom=True)]

    def argv(t: Trial) -> list[str]:
        return ["python", "train.py"] if "custom" in t.values else command(spec, runs, t.values)

    if plugins == "imported":
        catalog = discover()
    else:
        plugin_cache.catalog()  # builds the cache if it is stale
        catalog = plugin_cache.catalog()
        assert catalog["sam"].cls is None and catalog["cosine"].cls is None  # metadata only, nothing imported
    found = groups(trials, 3, catalog, argv, "grp")
    assert [[t.id for t in group] for group, _ in found] == [["t1", "t2", "t6"], ["t3"], ["t4"], ["t5"], ["t7"]]
    why = {group[0].id: reason for group, reason in found}
    assert why["t1"] == "" and "batch_size" in why["t3"] and "plugin sam" in why["t4"]
    # A trial left alone by the one that could not join it says so, not that reason as its own.
    (_, first), (_, second) = groups([trial(8, lr=0.1), trial(9, plugin=["sam"])], 2, catalog, argv, "grp")
    assert second.startswith("plugin sam (hpplug-methods) does not support packing: it drives the optimizer step")
    assert first == f"trial 9 cannot join it: {second}"
    assert "--lr" in why["t5"] and why["t7"] == "its command is not hpplug run"


@pytest.mark.slow
def test_sigterm_of_the_runner_checkpoints_every_member_of_its_pack(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "t.yaml", {"epochs": {"value": 200}, "wandb_mode": {"value": "disabled"},
                                            "lr": {"values": [0.05, 0.1]}})
    runner = subprocess.Popen([sys.executable, "-m", "hpplug", "sweep", str(path), "--dir", "sw", "--pack"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(  # both in training: an epoch logged
            "val/accuracy" in _text(tmp_path / "sw" / "runs" / t / "metrics.jsonl") for t in _ids(tmp_path / "sw", 2)):
        time.sleep(0.1)
    runner.send_signal(signal.SIGTERM)
    out = runner.communicate(timeout=120)[0].decode()
    assert runner.returncode == 128 + signal.SIGTERM, out
    trials = json.loads((tmp_path / "sw" / "sweep.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["interrupted"] * 2 and {t["pack"] for t in trials} == {1}, out
    for t in trials:
        assert summary(t)["status"] == "interrupted" and checkpoint.has_checkpoint(Path(t["record"]))


def _ids(sweep_dir: Path, n: int) -> list[str]:
    """The ids of the first ``n`` trials once ``sweep.json`` has them (else none)."""
    try:
        trials = json.loads((sweep_dir / "sweep.json").read_text())["trials"]
    except (OSError, ValueError):
        return ["?"]
    return [t["id"] for t in trials[:n]] if len(trials) >= n else ["?"]


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.mark.slow
def test_a_resumed_trial_and_a_new_one_do_not_share_a_pack(tmp_path: Path) -> None:
    """Members step in lockstep: a trial resumed from its checkpoint (a real run interrupted
    by Ctrl-C) and a new trial go to separate processes, each saying why."""
    from hpplug.manager import discover
    from hpplug.sweep.packing import groups
    from hpplug.sweep.spec import load
    from hpplug.sweep.state import Trial
    from hpplug.sweep.trials import command

    values = {"epochs": 200, "wandb_mode": "disabled"}
    spec, _ = load(write_yaml(tmp_path / "p.yaml", {k: {"value": v} for k, v in values.items()}))
    runs = tmp_path / "runs"
    run = subprocess.Popen(command(spec, runs, values), env={**os.environ, "WANDB_RUN_ID": "t1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "val/accuracy" not in _text(runs / "t1" / "metrics.jsonl"):
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 130 and checkpoint.has_checkpoint(runs / "t1")
    trials = [Trial(number=n, id=f"t{n}", config={k: {"value": v} for k, v in values.items()}, values=values,
                    record=str(runs / f"t{n}")) for n in (1, 2, 3)]
    found = groups(trials, 3, discover(), lambda t: command(spec, runs, t.values), "grp")
    assert [[t.id for t in group] for group, _ in found] == [["t1"], ["t2", "t3"]]
    assert "start from different updates" in found[0][1]


@pytest.mark.slow
def test_trials_waiting_for_a_process_do_not_start_once_the_target_is_reached(tmp_path: Path) -> None:
    """Four suggestions make two packs (batch sizes differ); one process at a time: the first
    pack reaches metric.target, so the second, never started, is dropped as never suggested."""
    path = write_yaml(tmp_path / "t.yaml", {"epochs": {"value": 1}, "wandb_mode": {"value": "disabled"},
                                            "batch_size": {"values": [32, 64]}, "lr": {"values": [0.1, 0.2]}},
                      metric={"name": "val/accuracy", "goal": "maximize", "target": 0.01})
    out, trials = sweep(path, "sw", "--pack", "4")
    assert len(trials) == 2 and [t["status"] for t in trials] == ["finished"] * 2, out
    assert len({t["values"]["batch_size"] for t in trials}) == 1 and {t["pack"] for t in trials} == {1}
    assert any("metric.target 0.01 reached" in line for line in out)
    assert sorted(p.name for p in (tmp_path / "sw" / "runs").iterdir() if p.name != "wandb") == \
        sorted(t["id"] for t in trials)


@pytest.mark.slow
def test_a_rerun_adopts_a_live_pack_as_one_process_and_waits_for_it(tmp_path: Path) -> None:
    """The runner is SIGKILLed while its pack trains; the pack lives on. The next runner
    adopts the pack's members (--parallel 1: the second pack starts after they ended) and
    ends when every trial has: each trial ran once, no trial was started again."""
    path = write_yaml(tmp_path / "a.yaml", {"epochs": {"value": 40}, "wandb_mode": {"value": "disabled"},
                                            "lr": {"values": [0.05, 0.1, 0.2, 0.3]}})
    runner = subprocess.Popen([sys.executable, "-m", "hpplug", "sweep", str(path), "--dir", "sw", "--pack", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(
            "val/accuracy" in _text(tmp_path / "sw" / "runs" / t / "metrics.jsonl") for t in _ids(tmp_path / "sw", 2)):
        time.sleep(0.05)
    os.kill(runner.pid, signal.SIGKILL)  # the runner only: its pack process goes on
    runner.wait()
    lines, trials = sweep(path, "sw", "--pack", "2")
    text = "\n".join(lines)
    assert [t["status"] for t in trials] == ["finished"] * 4 and [t["attempts"] for t in trials] == [1] * 4, text
    assert text.count("still running") == 2 and [t["pack"] for t in trials] == [1, 1, 2, 2], text
    adopted = [json.loads(line)["time"] for t in trials[:2]
               for line in (Path(t["record"]) / "metrics.jsonl").read_text().splitlines()]
    started = min(json.loads(line)["time"] for t in trials[2:]
                  for line in (Path(t["record"]) / "metrics.jsonl").read_text().splitlines())
    assert started > max(adopted)  # pack 2 started after pack 1 had ended, not beside it


@pytest.mark.slow
def test_the_runner_of_a_packed_sweep_imports_no_torch_and_no_wandb(tmp_path: Path) -> None:
    """The runner checks the YAML, groups the trials and renders their commands from the plugin
    metadata cache and its own copy of W&B's macros: torch, Accelerate and W&B load only in the
    pack process, which starts about a second after the command."""
    path = write_yaml(tmp_path / "r.yaml", {"epochs": {"value": 1}, "wandb_mode": {"value": "offline"},
                                            "lr": {"values": [0.05, 0.1]}})
    env = {**os.environ, "WANDB_SILENT": "true"}
    subprocess.run([sys.executable, "-m", "hpplug", "plugins"], env=env, capture_output=True, check=True)  # warm
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpplug", "sweep", str(path), "--dir", "sw",
                           "--pack", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert "sweeps" in imported and not imported & {"torch", "accelerate", "wandb"}
    trials = json.loads(Path("sw/sweep.json").read_text())["trials"]
    assert [(t["pack"], t["status"]) for t in trials] == [(1, "finished")] * 2
    assert len(find_run_files(Path("sw/runs/wandb"))) == 2  # W&B ran, in the pack process


@pytest.mark.slow
def test_your_own_models_pack_and_one_a_pack_cannot_train_runs_alone(tmp_path: Path) -> None:
    """``--model mycode:...`` packs like a built-in model. A model the pack finds it cannot
    train as one (here alpha dropout, known once built) does not fail its trials: each
    is trained alone next, says why, and its packed attempt is kept in its record."""
    (tmp_path / "mycode.py").write_text((Path(__file__).parent / "files" / "mycode.py").read_text())
    path = write_yaml(tmp_path / "own.yaml", {"epochs": {"value": 1}, "wandb_mode": {"value": "disabled"},
                                              "model": {"values": ["mycode:Net", "mycode:noisy"]},
                                              "lr": {"values": [0.05, 0.1]}})
    lines, trials = sweep(path, "sw", "--pack", "4", "--parallel", "1")
    assert [t["status"] for t in trials] == ["finished"] * 4, lines
    net = [t for t in trials if t["values"]["model"] == "mycode:Net"]
    noisy = [t for t in trials if t["values"]["model"] == "mycode:noisy"]
    assert {t["pack"] for t in net} == {1} and [summary(t)["pack/size"] for t in net] == [2, 2]
    for t in noisy:
        assert t["pack"] is None and t["attempts"] == 2 and "AlphaDropout" in t["alone"]
        assert any(line.startswith(f"trial {t['number']} {t['id']}: its pack could not train it: layer ")
                   and line.endswith("it runs alone next") for line in lines), lines
        kept = json.loads((Path(t["record"]) / "attempts" / "1" / "summary.json").read_text())
        assert kept["status"] == "failed" and kept["pack/refused"] is True and kept["updates"] == 0
        assert summary(t)["status"] == "finished" and "pack/size" not in summary(t)


def test_a_rerun_trains_alone_a_member_whose_pack_could_not_train_it(tmp_path: Path) -> None:
    """A runner killed before it saw a pack's refusal: the next one reads it from the
    member's summary, queues the trial first and never packs it again."""
    from hpplug.sweep.runner import Runner
    from hpplug.sweep.spec import load

    spec, _ = load(write_yaml(tmp_path / "r.yaml", {"epochs": {"value": 1}, "lr": {"values": [0.1, 0.2]}}))
    runner = Runner(spec, tmp_path / "sw", pack=2, echo=lambda line: None)
    runner.load()
    first, second = runner.next.new_trial(), runner.next.new_trial()
    for trial in (first, second):
        trial.status, trial.pack, trial.launched = "running", 1, time.time() - 5
        trial.record_dir.mkdir(parents=True)
    (first.record_dir / "summary.json").write_text(json.dumps(
        {"status": "failed", "updates": 0, "error": "layer 0 (AlphaDropout) draws random numbers", "pack/refused": True}))
    (second.record_dir / "summary.json").write_text(json.dumps({"status": "failed", "updates": 0, "error": "boom"}))
    runner.pick_up()
    assert first.alone == "layer 0 (AlphaDropout) draws random numbers" and second.alone is None
    assert runner.next.queue[0] is first and first.status == "interrupted"
    from hpplug.sweep.packing import groups

    found = groups(list(runner.next.queue), 2, runner.plugins(), runner.procs.command, "g")
    assert [([t.id for t in group], why) for group, why in found][0] == ([first.id], "its pack could not train it")


def test_a_refused_trial_waits_until_its_pack_process_lets_go_of_its_lock(tmp_path: Path) -> None:
    """Its pack process (here: this test) may still train the others and holds the trial's
    lock: the trial is not started beside it (it would be refused its lock), then starts
    alone once the lock is free, and finishes."""
    import fcntl

    from hpplug.sweep.runner import Runner
    from hpplug.sweep.spec import load

    spec, _ = load(write_yaml(tmp_path / "w.yaml", {"epochs": {"value": 1}, "wandb_mode": {"value": "disabled"},
                                                    "lr": {"values": [0.1]}}))
    lines: list[str] = []
    runner = Runner(spec, tmp_path / "sw", pack=2, parallel=2, count=0, echo=lines.append)
    runner.load()
    trial = runner.next.new_trial()
    trial.status, trial.alone, trial.attempts = "interrupted", "layer 0 (AlphaDropout) draws random numbers", 1
    runner.next.started_new = 0
    runner.next.first(trial)
    lock = runner.procs.lock_file(trial)
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        runner.start_more()
        assert runner.procs.handles == {} and runner.next.queue == [trial] and trial.status == "interrupted"
    runner.start_more()
    assert list(runner.procs.handles) == [trial.id] and runner.next.queue == []
    process = runner.procs.handles[trial.id]
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    runner.finish(trial, process.poll())
    assert trial.status == "finished" and trial.pack is None and trial.attempts == 2, lines
    assert any(line.endswith("runs alone (its pack could not train it)") for line in lines), lines


def test_the_runner_does_not_end_while_a_refused_trial_waits_for_its_lock(tmp_path: Path) -> None:
    """No process of the sweep runs, but the trial's lock is still held (here by another
    process; after a kill, by what the pack forked): the runner says so and waits, then
    trains the trial alone once the lock is free."""
    from hpplug.sweep.runner import Runner
    from hpplug.sweep.spec import load

    spec, _ = load(write_yaml(tmp_path / "w.yaml", {"epochs": {"value": 1}, "wandb_mode": {"value": "disabled"},
                                                    "lr": {"values": [0.1]}}))
    lines: list[str] = []
    runner = Runner(spec, tmp_path / "sw", pack=2, count=0, echo=lines.append, poll_s=0.1)
    runner.load()
    trial = runner.next.new_trial()
    trial.status, trial.alone, trial.attempts = "pending", "layer 0 (AlphaDropout) draws random numbers", 1
    runner.next.started_new = 0
    lock = runner.procs.lock_file(trial)
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.5)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    runner.loop()
    holder.wait()
    assert trial.status == "finished" and trial.attempts == 2, lines
    assert any("waits for its pack's process to end" in line for line in lines), lines
