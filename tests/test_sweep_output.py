"""What ``hpplug sweep`` shows: trial lines, hyperband stops, the pictures, and the
``sweep`` extra.

The hyperband sweep is real (W&B's engine, real trial processes, their records read
back); the pictures are checked on the figure objects before they are saved; the missing
extra is a real import failure in a fresh interpreter.
"""

from __future__ import annotations

import itertools
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

from hpplug.sweep.plot import AXIS_CHARS, PANEL_CHARS, figures
from hpplug.sweep.report import fit, hyperband_reason
from hpplug.sweep.spec import SweepSpec, load
from hpplug.sweep.state import Trial

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
    from hpplug.sweep.records import in_training

    record = tmp_path / "run1"
    record.mkdir()
    launched = 1000.0
    trial = Trial(number=1, id="run1", config={}, values={}, record=str(record), launched=launched)

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
    from hpplug.sweep.report import ended_line

    monkeypatch.setenv("COLUMNS", "200")

    spec = spec_of(tmp_path, method="grid", parameters={"lr": {"values": [0.1, 0.2]}})
    stopped = Trial(number=2, id="abc", status="stopped", metric=0.5, values={"lr": 0.2}, config={}, record="",
                    launched=10.0, ended=14.0)
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
    from hpplug.sweep.command import sweep_command

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


# --- the pictures --------------------------------------------------------------------------


def trial(number: int, values: dict[str, Any], metric: float | None, status: str = "finished") -> Trial:
    return Trial(number=number, id=f"run{number:05d}", status=status, metric=metric, values=values,
                 config={k: {"value": v} for k, v in values.items()}, record="")


def drawn_labels(fig: Any, ax: Any) -> list[Any]:
    """The x tick labels of ``ax`` as drawn (``fig.canvas.draw()`` first): (text, box)."""
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in ax.get_xticklabels() if t.get_text()]


def overlaps(boxes: list[Any]) -> list[tuple[str, str]]:
    return [(a, b) for (a, x), (b, y) in itertools.combinations(boxes, 2) if x.overlaps(y)]


@pytest.fixture
def grid_sweep(tmp_path: Path) -> tuple[SweepSpec, list[dict[str, Any]]]:
    """Repeated grid points (three seeds each), a long plugin parameter, a plugin choice,
    values nobody tried (the sweep was cut short), and two numeric distributions."""
    long_name = "label-smoothing-with-a-long-name.smoothing_factor"
    spec = spec_of(tmp_path, method="grid", parameters={
        "lr": {"values": [0.01, 0.1, 0.5]}, "seed": {"values": [1, 2, 3]}, long_name: {"values": [0.0, 0.1]},
        "plugin": {"values": [["cosine", "dropout", "weight-decay"], ["cosine", "dropout", "weight-decay", "crop"],
                              ["cosine", "dropout", "weight-decay", "crop", "flip"]]},
        "epochs": {"value": 3}, "weight_decay": {"distribution": "log_uniform_values", "min": 1.0e-6, "max": 1.0e-2},
        "momentum": {"distribution": "uniform", "min": 0.0, "max": 0.99}})
    trials, n = [], 0
    for lr, seed, plugin in itertools.product([0.01, 0.1], [1, 2, 3], spec.parameters["plugin"]["values"][:2]):
        n += 1
        numbers = {"weight_decay": 10 ** (-6 + 4 * ((n * 0.37) % 1)), "momentum": (n * 0.61) % 0.99}
        trials.append(trial(n, {"lr": lr, "seed": seed, long_name: 0.1, "plugin": plugin, "epochs": 3, **numbers},
                            0.5 + lr + 0.01 * seed, "stopped" if n == 3 else "finished"))
    trials.append(trial(n + 1, {"lr": 0.5, "seed": 1, long_name: 0.0, "plugin": plugin, "epochs": 3}, None,
                        "failed"))
    return spec, trials


def test_scatter_shows_what_was_tried_spread_counted_and_legible(grid_sweep: Any) -> None:
    spec, trials = grid_sweep
    fig = figures(spec, trials)["scatter"]
    fig.canvas.draw()
    panels = {ax.get_xlabel().split("\n")[0]: ax for ax in fig.axes}
    short = next(name for name in panels if name not in ("lr", "seed", "plugin"))
    assert short.startswith("label-smoothing") and "…" in short and short.endswith("factor")
    assert all(len(line) <= PANEL_CHARS for ax in fig.axes for line in ax.get_xlabel().split("\n"))
    assert len(panels) == 6 and "epochs" not in panels  # constants get no panel
    assert panels["weight_decay"].get_xscale() == "log" and panels["momentum"].get_xscale() == "linear"

    # only the categories some scored trial tried: 0.5 (failed only) and the third plugin list get no column
    assert [t for t, _ in drawn_labels(fig, panels["lr"])] == ["0.01", "0.1"]
    assert [t for t, _ in drawn_labels(fig, panels["plugin"])] == ["+nothing", "+crop"]
    assert panels["plugin"].get_xlabel() == "plugin\n(each has cosine,dropout,weight-decay)"
    assert [t for t, _ in drawn_labels(fig, panels[short])] == ["0.1"]
    # identical grid points are spread apart, and counted
    xs = [tuple(c.get_offsets()[0]) for c in panels["lr"].collections if str(c.get_gid()).startswith("trial")]
    assert len(xs) == 12 and len(set(xs)) == 12
    assert sorted(a.get_text() for a in panels["lr"].texts) == ["n=6", "n=6"]
    assert len([c for c in panels["lr"].collections if c.get_gid() == "best"]) == 1
    for ax in fig.axes:
        assert not overlaps(drawn_labels(fig, ax)), ax.get_xlabel()


def test_many_long_categories_do_not_overlap(tmp_path: Path) -> None:
    values = [f"choice-with-a-rather-long-name-{i}" for i in range(40)]
    spec = spec_of(tmp_path, method="grid", parameters={"optimizer": {"values": values}, "lr": {"values": [0.1, 0.2]}})
    trials = [trial(i + 1, {"optimizer": v, "lr": 0.1}, 0.5 + i / 100) for i, v in enumerate(values)]
    fig = figures(spec, trials)["scatter"]
    fig.canvas.draw()
    ax = next(a for a in fig.axes if a.get_xlabel() == "optimizer")
    labels = drawn_labels(fig, ax)
    assert 5 <= len(labels) < 40 and not overlaps(labels)  # thinned to what fits
    assert all(len(text) <= 18 and "…" in text for text, _ in labels)


def test_parallel_coordinates_one_line_per_trial_coloured_by_the_metric(grid_sweep: Any) -> None:
    spec, trials = grid_sweep
    fig = figures(spec, trials)["parallel"]
    fig.canvas.draw()
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if str(line.get_gid()).startswith("trial")]
    scored = [t for t in trials if t.status != "failed"]
    assert sorted(line.get_gid() for line in lines) == sorted(f"trial {t.number}" for t in scored)
    names = [t for t, _ in drawn_labels(fig, ax)]
    assert names[0] == "lr" and names[-1] == "val/accuracy" and len(names) == 7  # 6 varying parameters + metric
    assert all(len(part) <= AXIS_CHARS for name in names for part in name.split("\n"))
    assert not overlaps(drawn_labels(fig, ax))
    # one vertical position per parameter and the metric; colour follows the metric
    assert all(len(line.get_xdata()) == 7 for line in lines)
    colour = {line.get_gid(): line.get_color() for line in lines}
    best, worst = max(scored, key=lambda t: t.metric), min(scored, key=lambda t: t.metric)
    assert colour[f"trial {best.number}"] != colour[f"trial {worst.number}"]
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "val/accuracy"  # the colour bar
    stopped = next(line for line in lines if line.get_gid() == "trial 3")
    assert stopped.get_linestyle() == "--"
    # the values written along each axis do not overlap either
    renderer = fig.canvas.get_renderer()
    texts = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
    assert {"+nothing", "+crop", "0.01", "0.1"} <= {t for t, _ in texts}
    assert not overlaps(texts)


def test_nothing_to_draw_gives_no_figures(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, method="grid", parameters={"lr": {"values": [0.1, 0.2]}})
    assert figures(spec, [trial(1, {"lr": 0.1}, None, "failed")]) == {}


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
