"""``hpplug sweep`` end to end: real trial subprocesses, W&B's own engine, real records.

Each trial is a real ``hpplug run`` (digits, a few epochs); W&B runs are real offline
runs read back with ``hpplug.wandb_file`` where W&B is on. Nothing of hpplug or W&B is
mocked; the tests read what the trials wrote.
"""

from __future__ import annotations

import itertools
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

from hpplug.sweep.command import sweep_command
from hpplug.sweep.runner import Runner
from hpplug.sweep.spec import load
from hpplug.sweep.state import Trial
from hpplug.sweep.wandb_engine import suggest, sweep_run
from hpplug.wandb_file import find_run_files, read_run

COMMAND = ["${env}", "hpplug", "run", "${args}"]


@pytest.fixture(autouse=True)
def _one_thread_per_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    """Digits trials are tiny: one intra-op thread each is fastest, and on a busy 2-core
    machine spinning OpenMP threads make them many times slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def write_yaml(path: Path, **config: Any) -> Path:
    config.setdefault("metric", {"name": "val/accuracy", "goal": "maximize"})
    config.setdefault("command", COMMAND)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_sweep(path: Path, sweep_dir: Path, **options: Any) -> int:
    """The sweep loop in this process (its trials are still subprocesses): no start-up cost."""
    spec, problems = load(path)
    assert not problems
    return Runner(spec, sweep_dir, poll_s=0.1, **options).run()


def state(sweep_dir: Path) -> dict[str, Any]:
    return json.loads((sweep_dir / "sweep.json").read_text())


def record(trial: dict[str, Any], name: str) -> Any:
    path = Path(trial["record"]) / name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(path.read_text())


def epoch_rows(trial: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in record(trial, "metrics.jsonl") if "val/accuracy" in row]


@pytest.mark.slow
def test_grid_sweep_runs_offline_to_completion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = {"plugin": [["step", "dropout"], ["cosine", "dropout"]], "lr": [0.03, 0.3]}
    path = write_yaml(tmp_path / "grid.yaml", method="grid", parameters={
        "epochs": {"value": 2}, "plugin": {"values": grid["plugin"]}, "lr": {"values": grid["lr"]},
        "step.gamma": {"value": 0.5}, "cosine.eta_min": {"value": 0.001}})
    monkeypatch.chdir(tmp_path)  # the command in this process (its trials are subprocesses)
    out = CliRunner().invoke(sweep_command, [str(path), "--dir", "sw", "--parallel", "2", "--wandb-mode", "offline"])
    assert out.exit_code == 0, out.output
    sweep_dir = tmp_path / "sw"
    s = state(sweep_dir)
    spec, _ = load(path)
    trials = s["trials"]

    # trial count = grid size, each trial's config is its own grid point
    assert len(trials) == 4 and {t["status"] for t in trials} == {"finished"}
    points = {(tuple(t["values"]["plugin"]), t["values"]["lr"]) for t in trials}
    assert points == {(tuple(p), lr) for p, lr in itertools.product(grid["plugin"], grid["lr"])}
    wandb_runs = {r.run_id: r for r in map(read_run, find_run_files(sweep_dir / "runs"))}
    assert set(wandb_runs) == {t["id"] for t in trials}
    for t in trials:
        plugins, lr = t["values"]["plugin"], t["values"]["lr"]
        local, run = record(t, "config.json"), wandb_runs[t["id"]]
        for config in (local, run.config):
            assert config["plugins"] == plugins and config["lr"] == lr and config["epochs"] == 2
            assert ("step.gamma" in config) == ("step" in plugins)  # the other plugin's values are not used
            assert config.get("cosine.eta_min", 0.001) == 0.001 and config.get("step.gamma", 0.5) == 0.5
        assert run.group == s["sweep_id"] and run.exit_code == 0
        assert record(t, "summary.json")["val/accuracy"] == t["metric"]  # the last epoch's; W&B shows the best:
        assert run.summary["val/accuracy"] == {"max": max(r["val/accuracy"] for r in epoch_rows(t))}

    # --parallel 2: trials ran at the same time
    assert any(a["launched"] < b["ended"] and b["launched"] < a["ended"]
               for a, b in itertools.combinations(trials, 2))

    # the best is picked right, and shown as a ready command line
    best = max(trials, key=lambda t: record(t, "summary.json")["val/accuracy"])
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["best"]["trial"] == best["id"] and summary["done"].startswith("grid exhausted")
    assert [t["metric"] for t in summary["trials"]] == sorted((t["metric"] for t in trials), reverse=True)
    assert summary["best"]["command"] in out.output
    assert f"--lr={best['values']['lr']}" in summary["best"]["command"]
    assert (sweep_dir / "metric_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    table = out.output[out.output.index("#  trial"):]
    assert [line.split()[1] for line in table.splitlines()[2:6]] == [t["id"] for t in summary["trials"]]

    # a completed sweep run again starts nothing
    assert run_sweep(path, sweep_dir) == 0
    assert len(state(sweep_dir)["trials"]) == 4


@pytest.mark.slow
def test_bayes_feeds_results_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "bayes.yaml", method="bayes", run_cap=3, parameters={
        "epochs": {"value": 1}, "wandb_mode": {"value": "disabled"},
        "lr": {"distribution": "log_uniform_values", "min": 0.0001, "max": 1.0}})
    assert run_sweep(path, tmp_path / "sw", seed="7", count=2) == 0
    assert len(state(tmp_path / "sw")["trials"]) == 2
    assert run_sweep(path, tmp_path / "sw", seed="7") == 0  # continues; run_cap ends it
    assert state(tmp_path / "sw")["done"] == "run_cap 3 reached"
    trials = state(tmp_path / "sw")["trials"]
    assert len(trials) == 3 and all(t["status"] == "finished" for t in trials)

    spec, _ = load(path)
    runner = Runner(spec, tmp_path / "sw", seed="7")
    runner.load()
    # the engine sees each trial's real result, read from its run record
    for t in trials:
        run = sweep_run(runner.trials[t["number"] - 1])
        assert run.summary_metrics["val/accuracy"] == record(t, "summary.json")["val/accuracy"] == t["metric"]
        assert run.metric_history("val/accuracy") == [r["val/accuracy"] for r in epoch_rows(t)]
    # trial 3 is what the engine suggests from trials 1 and 2 with their results
    every = runner.state.trials
    runner.state.trials = every[:2]
    assert suggest(spec, runner.state).config == trials[2]["config"]

    # the same history with other results gives other suggestions
    runner.state.trials = every
    real = suggest(spec, runner.state).config["lr"]["value"]
    assert suggest(spec, runner.state).config["lr"]["value"] == real  # seeded: only the results can change it
    suggestions = {real}
    for metrics in itertools.permutations([0.1, 0.5, 0.9]):
        for t, m in zip(trials, metrics):
            summary = {**record(t, "summary.json"), "val/accuracy": m}
            (Path(t["record"]) / "summary.json").write_text(json.dumps(summary))
            rows = [{**r, "val/accuracy": m} if "val/accuracy" in r else r for r in record(t, "metrics.jsonl")]
            (Path(t["record"]) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        suggestions.add(suggest(spec, runner.state).config["lr"]["value"])
    assert len(suggestions) >= 3


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_running_a_trial_twice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Grid over epochs: trial 2 is the long one (~6 s of digits training), interrupted while it
    # trains (100 epochs took 1.5 s: a busy test process could miss that window).
    path = write_yaml(tmp_path / "rs.yaml", method="grid", parameters={
        "wandb_mode": {"value": "disabled"}, "epochs": {"values": [1, 400, 2]}})
    sweep_dir = tmp_path / "sw"
    # SIGINT as a terminal delivers it, also when this test runs in a background job, whose
    # children inherit SIGINT ignored (Python then installs no KeyboardInterrupt handler).
    proc = subprocess.Popen([sys.executable, "-m", "hpplug", "sweep", str(path), "--dir", "sw"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait until trial 2 is training
        time.sleep(0.1)
        try:
            trials = state(sweep_dir)["trials"]
        except (OSError, json.JSONDecodeError):
            continue
        if len(trials) == 2 and trials[1]["status"] == "running":
            metrics = Path(trials[1]["record"]) / "metrics.jsonl"
            if metrics.exists() and metrics.read_text().count("\n") >= 2:
                break
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "run the same command again to continue" in out
    first, second = state(sweep_dir)["trials"]
    assert first["status"] == "finished" and second["status"] == "interrupted", out
    assert record(second, "summary.json")["status"] == "interrupted"
    assert (Path(second["record"]) / "checkpoint").is_dir()
    done_before = len(epoch_rows(second))
    assert 2 <= done_before < 400
    first_rows = (Path(first["record"]) / "metrics.jsonl").read_text()

    assert run_sweep(path, sweep_dir) == 0  # the same sweep again
    assert f"trial 2 {second['id']}: resuming" in capsys.readouterr().out
    trials = state(sweep_dir)["trials"]
    assert len(trials) == 3 and len({t["id"] for t in trials}) == 3
    assert [t["values"]["epochs"] for t in trials] == [1, 400, 2]  # every grid point once
    assert [t["status"] for t in trials] == ["finished"] * 3
    assert [t["attempts"] for t in trials] == [1, 2, 1]
    assert (Path(first["record"]) / "metrics.jsonl").read_text() == first_rows  # not run again
    resumed = trials[1]
    assert [r["epoch"] for r in epoch_rows(resumed)] == list(range(1, 401))  # continued, not restarted
    assert record(resumed, "summary.json")["epochs_done"] == 400


def test_metric_target_ends_the_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "t.yaml", method="random", run_cap=5, parameters={
        "epochs": {"value": 1}, "wandb_mode": {"value": "disabled"}, "lr": {"values": [0.1, 0.2]}},
        metric={"name": "val/accuracy", "goal": "maximize", "target": 0.01})
    assert run_sweep(path, tmp_path / "sw") == 0
    assert len(state(tmp_path / "sw")["trials"]) == 1
    assert "metric.target 0.01 reached by trial 1" in capsys.readouterr().out


def test_stale_environment_of_a_sweep_is_not_passed_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial gets its own run id and the sweep's group, never an outer agent's sweep id."""
    spec, _ = load(write_yaml(tmp_path / "e.yaml", method="grid", parameters={"lr": {"values": [0.1]}}))
    monkeypatch.setenv("WANDB_SWEEP_ID", "outer")
    runner = Runner(spec, tmp_path / "sw", parallel=2)
    runner.load()
    env = runner.procs.env(Trial(number=1, id="abcd1234", config={}, values={}, record=""))
    assert env["WANDB_RUN_ID"] == "abcd1234" and env["WANDB_RUN_GROUP"] == spec.sweep_id
    assert "WANDB_SWEEP_ID" not in env and env["WANDB_MODE"] == "offline"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_one_runner_per_sweep_folder(tmp_path: Path) -> None:
    from hpplug.errors import HpplugError
    from hpplug.sweep.trials import lock_sweep

    held = lock_sweep(tmp_path / "sw")
    try:
        with pytest.raises(HpplugError, match="another hpplug sweep is running"):
            lock_sweep(tmp_path / "sw")
    finally:
        held.close()
    lock_sweep(tmp_path / "sw").close()  # free again


def test_a_trials_lock_tells_whether_it_runs(tmp_path: Path) -> None:
    """The lock a trial's process holds from its start says whether it lives, and leads to its
    pid when that was never recorded; a trial from a runner without locks is found by pid."""
    import psutil

    from hpplug.sweep.trials import adopt, alive, start

    lock, sleeper = tmp_path / "t.lock", [sys.executable, "-c", "import time; time.sleep(60)"]
    proc = start(sleeper, dict(os.environ), tmp_path / "t.log", [lock])
    try:
        assert alive(lock) is True
        found = adopt(lock, None, None)
        assert found is not None and found.pid == proc.pid and found.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert alive(lock) is False and found.poll() == -1 and adopt(lock, None, None) is None

    old = subprocess.Popen(sleeper)  # started without a lock file
    try:
        started = psutil.Process(old.pid).create_time()
        live = adopt(tmp_path / "none.lock", old.pid, started)
        assert live is not None and live.poll() is None
        assert adopt(tmp_path / "none.lock", old.pid, started + 5) is None  # the pid, reused by another
    finally:
        old.kill()
        old.wait()
    assert live.poll() == -1
