"""What ``hpplug sweep`` shows: trial lines, hyperband stops, the pictures, and the
``sweep`` extra.

The hyperband sweep is real (W&B's engine, real trial processes, their records read
back); the pictures are checked on the figure objects before they are saved; the missing
extra is a real import failure in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from hpplug.sweep_report import fit, hyperband_reason
from hpplug.sweep_spec import SweepSpec, load

COMMAND = ["${env}", "hpplug", "run", "${args}"]


def spec_of(tmp_path: Path, **config: Any) -> SweepSpec:
    config.setdefault("metric", {"name": "val/accuracy", "goal": "maximize"})
    config.setdefault("command", COMMAND)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    spec, found = load(path)
    assert spec is not None, found
    return spec


# --- trial lines ---------------------------------------------------------------------------


def test_lines_fit_the_width_and_never_cut_the_head() -> None:
    head = "trial 12 k2m9x0qa started "
    items = ["lr=0.1", "batch_size=64", "plugin=cosine,lr-scaling,dropout,weight-decay,label-smoothing,crop"]
    wrapped = fit(head, items, columns=40, wrap=True)
    assert wrapped[0].startswith(head) and all(len(line) <= 40 for line in wrapped)
    assert "lr=0.1" in wrapped[0] and wrapped[1] == "    batch_size=64"
    assert wrapped[2].endswith("…") and wrapped[2].startswith("    plugin=cosine")  # only one over-long item is cut
    one = fit(head, items, columns=40)
    assert one == [head + "  lr=0.1  bat…"] and len(one[0]) == 40
    assert fit(head, items, columns=10) == [head]  # too narrow: the head stays whole, values go
    assert fit(head, items, columns=500) == [head + "  " + "  ".join(items)]


# --- hyperband -----------------------------------------------------------------------------


def test_hyperband_reason_is_the_stopped_runs_own_in_its_own_sign() -> None:
    """W&B's engine negates a maximized metric and shares one list of info lines between all
    runs: the reason must still be the stopped run's, with the real values."""
    from sweeps import RunState, SweepRun, stop_runs

    config = {"method": "grid", "metric": {"name": "acc", "goal": "maximize"}, "parameters": {"x": {"values": [1]}},
              "early_terminate": {"type": "hyperband", "max_iter": 10, "s": 1, "eta": 2}}  # one band: step 5
    curves = {"good": [0.5, 0.6, 0.7, 0.8, 0.9], "mid": [0.4, 0.5, 0.6, 0.7, 0.75],
              "bad": [0.1, 0.1, 0.12, 0.1, 0.11], "late": [0.3, 0.5, 0.9]}
    runs = [SweepRun(name=name, state=RunState.running if name != "good" else RunState.finished,
                     history=[{"acc": v} for v in values]) for name, values in curves.items()]
    stopped = stop_runs(config, runs, validate=False)
    assert [r.name for r in stopped] == ["bad"]
    assert "Run: late" in stopped[0].early_terminate_info["lines"][-1]  # the engine's shared line: another run's
    spec = SweepSpec(path=Path("s.yaml"), raw=config, text="")
    assert hyperband_reason(spec, stopped[0]) == (
        "best acc 0.12 in 5 steps is below 0.75, hyperband's threshold at step 5")
    strict = SweepSpec(path=Path("s.yaml"), raw={**config, "metric": {"name": "acc", "goal": "minimize"},
                                                 "early_terminate": {**config["early_terminate"], "strict": True}},
                       text="")
    runs[0].history = [{"acc": v} for v in (0.1, 0.1, 0.1, 0.1, 0.1)]
    worst = stop_runs(strict.raw, runs, validate=False)
    assert [r.name for r in worst] == ["mid"]
    assert hyperband_reason(strict, worst[0]) == "acc 0.75 at step 5 is above 0.11, hyperband's threshold at step 5"


def test_a_stop_request_after_training_does_not_kill_the_run() -> None:
    """SIGUSR1 is a stop request while the loop runs; after it there is nothing to stop, and
    the signal's default action would kill a run that is writing its record."""
    from hpplug.checkpoint import StopRequests

    before = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        with StopRequests() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled at once, in this (the main) thread
            assert stop.reason == "stopped" and stop.signum == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGUSR1)  # a late request: ignored, this process goes on
        child = subprocess.run([sys.executable, "-c", "import signal as s; print(s.getsignal(s.SIGUSR1) == s.SIG_DFL)"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == "True"  # nothing ignored is passed on to the programs it starts

        def mine(signum: int, frame: Any) -> None:
            pass
        signal.signal(signal.SIGUSR1, mine)
        with StopRequests():
            pass
        assert signal.getsignal(signal.SIGUSR1) is mine  # a handler of the caller's own is given back
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_only_a_trial_in_its_training_loop_is_asked_to_stop(tmp_path: Path) -> None:
    """Before its first row of this attempt SIGUSR1 would kill the trial (no handler yet);
    after its last epoch or its test results there is nothing left to stop."""
    from hpplug.sweep_trials import in_training

    record = tmp_path / "run1"
    record.mkdir()
    launched = 1000.0
    trial = {"record": str(record), "launched": launched}

    def write(rows: list[dict[str, Any]], epochs: Any = 10) -> bool:
        (record / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (record / "config.json").write_text(json.dumps({"epochs": epochs}))
        return in_training(trial)

    earlier = [{"step": 20, "time": 500.0, "epoch": 1, "val/accuracy": 0.5}]  # a previous attempt's row
    now = {"step": 40, "time": 1002.0, "epoch": 2, "val/accuracy": 0.6}
    assert not write([])
    assert not write(earlier)  # resumed, still setting up
    assert write([*earlier, now])
    assert not write([*earlier, now, {"step": 400, "time": 1003.0, "epoch": 10, "val/accuracy": 0.9}])
    assert not write([*earlier, now, {"step": 40, "time": 1003.0, "test/accuracy": 0.9}])
    assert write([*earlier, now], epochs="ten")  # a damaged config: its end is unknown, its rows still tell
    (record / "config.json").write_text("{torn")
    assert in_training(trial)


def test_a_damaged_summary_does_not_make_up_where_a_trial_stopped(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from hpplug.sweep_report import ended_line

    monkeypatch.setenv("COLUMNS", "200")

    spec = spec_of(tmp_path, method="grid", parameters={"lr": {"values": [0.1, 0.2]}})
    stopped = {"number": 2, "id": "abc", "status": "stopped", "metric": 0.5, "values": {"lr": 0.2},
               "launched": 10.0, "ended": 14.0}
    line = ended_line(spec, stopped, {"epochs_done": 3, "updates": 70}, 2, 2)
    assert line == "trial 2 abc stopped   val/accuracy=0.5  at update 70 (3 epochs done)  (4.0 s; 2/2 done)  lr=0.2"
    for damaged in ({"epochs_done": True, "updates": 70}, {"epochs_done": "3", "updates": 70}, {}):
        assert ended_line(spec, stopped, damaged, 2, 2) == (
            "trial 2 abc stopped   val/accuracy=0.5  (4.0 s; 2/2 done)  lr=0.2")


def read_rows(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (record / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_hyperband_sweep_names_and_really_stops_the_bad_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two good trials at once, then one that learns nothing: hyperband's one band (step 5)
    stops the worst of three. Its lines name it with its real values, and its record shows
    it stopped where the line says. (That the engine's own info line names another run is
    in the test above.)"""
    from hpplug.sweep import sweep_command

    epochs = 25
    path = tmp_path / "hb.yaml"
    path.write_text(yaml.safe_dump({
        "method": "grid", "metric": {"name": "val/accuracy", "goal": "maximize"}, "command": COMMAND,
        "early_terminate": {"type": "hyperband", "max_iter": 10, "s": 1, "eta": 2},
        "parameters": {"epochs": {"value": epochs}, "batch_size": {"value": 32}, "wandb_mode": {"value": "disabled"},
                       "lr": {"values": [0.1, 0.2, 0.0001]}}}, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("COLUMNS", "80")
    out = CliRunner().invoke(sweep_command, [str(path), "--dir", "sw", "--parallel", "2"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    trials = json.loads((tmp_path / "sw" / "sweep.json").read_text())["trials"]
    good1, good2, bad = trials
    assert [t["status"] for t in trials] == ["finished", "finished", "stopped"], out.output

    # each trial announced when it starts, with its run id and only the value that varies;
    # its result line and the table give that run id the number it was announced with
    starts = [line for line in lines if " started " in line]
    assert starts == [f"trial {t['number']} {t['id']} started   lr={t['values']['lr']:g}" for t in trials]
    for t, start in zip(trials, starts):
        ended = [i for i, line in enumerate(lines) if line.startswith(f"trial {t['number']} {t['id']} {t['status']} ")]
        assert len(ended) == 1 and lines.index(start) < ended[0]
    table = lines[lines.index(next(line for line in lines if line.startswith("#  trial"))) + 2:][:3]
    assert sorted(tuple(row.split()[:3]) for row in table) == [(str(t["number"]), t["id"], t["status"]) for t in trials]
    assert all(len(line) <= 80 for line in lines if line.startswith(("trial ", "    "))), out.output

    # the stop line names the trial that is stopped, with its real best value and threshold
    stops = [i for i, line in enumerate(lines) if "stopping early (hyperband)" in line]
    assert len(stops) == 1
    said = " ".join(line.strip() for line in lines[stops[0]:stops[0] + 3])
    found = re.search(r"best val/accuracy ([\d.]+) in (\d+) steps is below ([\d.]+), hyperband's threshold at step 5",
                      said)
    assert found, said
    best, steps, threshold = float(found[1]), int(found[2]), float(found[3])
    epoch_rows = {t["id"]: [r for r in read_rows(Path(t["record"])) if "val/accuracy" in r] for t in trials}
    bad_rows = epoch_rows[bad["id"]]
    assert best == pytest.approx(max(r["val/accuracy"] for r in bad_rows[:steps]), abs=5e-5)
    at_band = sorted(rows[4]["val/accuracy"] for rows in epoch_rows.values())  # each trial's value at step 5
    assert threshold == pytest.approx(at_band[1], abs=5e-5) and best < threshold  # the middle one: r = 1/eta
    assert lines[stops[0]].startswith(f"trial 3 {bad['id']}: stopping early (hyperband):")

    # ...and it really stopped there: its record, and the line that says where
    summary = json.loads((Path(bad["record"]) / "summary.json").read_text())
    assert summary["status"] == "stopped" and bad["exit_code"] == 0
    assert steps <= summary["epochs_done"] < epochs
    assert [r["epoch"] for r in bad_rows] == list(range(1, summary["epochs_done"] + 1))
    assert max(r["step"] for r in read_rows(Path(bad["record"]))) <= summary["updates"]
    per_epoch = json.loads((Path(good1["record"]) / "summary.json").read_text())["updates"] // epochs
    assert summary["epochs_done"] * per_epoch < summary["updates"] <= (summary["epochs_done"] + 1) * per_epoch
    ended = next(line for line in lines if line.startswith(f"trial 3 {bad['id']} stopped "))
    assert f"at update {summary['updates']} ({summary['epochs_done']} epochs done)" in ended
    assert bad["metric"] == bad_rows[-1]["val/accuracy"] == summary["val/accuracy"]
    assert "stopped early" in (tmp_path / "sw" / "logs" / f"{bad['id']}.log").read_text()
    for t in (good1, good2):
        assert json.loads((Path(t["record"]) / "summary.json").read_text())["epochs_done"] == epochs
        assert not t.get("stop_requested")


# --- the sweep extra -----------------------------------------------------------------------

BLOCKER = '''
import sys


class Missing:
    """As if these were not installed: their import fails like any missing module's."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Missing())
'''


def without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment whose Python cannot import ``modules`` (a sitecustomize on PYTHONPATH)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(BLOCKED=set(modules)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_sweep_without_the_extra_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"method": "grid", "metric": {"name": "val/accuracy", "goal": "maximize"},
                                    "command": COMMAND, "parameters": {"lr": {"values": [0.1]}}}))
    env = without(tmp_path, "sweeps")
    check = subprocess.run([sys.executable, "-c", "import sweeps"], env=env, capture_output=True, text=True)
    assert "No module named 'sweeps'" in check.stderr  # the blocker works: a real import failure
    out = subprocess.run([sys.executable, "-m", "hpplug", "sweep", str(path), "--dir", str(tmp_path / "sw")],
                         env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "Error: hpplug sweep needs W&B's sweep engine, the 'sweep' extra of hpplug: pip install 'hpplug[sweep]'"]
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_training_needs_nothing_of_the_extra(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "hpplug", "run", "--epochs", "1", "--wandb-mode", "disabled",
                          "--output-dir", str(tmp_path / "runs")],
                         env={**without(tmp_path, "sweeps", "matplotlib"), "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert " finished: " in out.stdout
