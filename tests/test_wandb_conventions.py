"""hpplug as W&B users expect it, checked in real offline W&B runs read back from their files:
W&B's variables and the run's name, tags, group and notes; the run's URL or upload command
when it starts and ends (every part of a resumed run); metrics declared with define_metric;
versions recorded and operational settings kept apart from the hyperparameters; and a run
that fails before training still ends with its closing line and a failed summary.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
from torch import nn

from hpplug import Model, Plugin, hookimpl
from hpplug.config import SETTINGS, RunConfig
from hpplug.wandb_file import find_run_files, read_run

QUICK = ("--epochs", "2", "--batch-size", "128", "--mlp.hidden", "32", "--log-every", "5")
VARIABLES = {"WANDB_PROJECT": "env-project", "WANDB_ENTITY": "env-team", "WANDB_NAME": "env name",
             "WANDB_TAGS": "env1,env2", "WANDB_NOTES": "set in the environment", "WANDB_RUN_GROUP": "env-group"}


def record_of(out: Path) -> Path:
    (record,) = [p for p in out.iterdir() if p.name != "wandb"]
    return record


def sync_folders(stdout: str) -> list[str]:
    """The folders the closing `wandb sync` line names."""
    (line,) = [l for l in stdout.splitlines() if l.startswith("W&B run saved offline; upload it with: wandb sync ")]
    return line.split("wandb sync ", 1)[1].split()


# --- one run with W&B's variables set and the command line giving some of the same -------


@pytest.fixture(scope="module")
def named_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``hpplug run --name 'cli name' --tags cli1,cli2`` with every W&B variable set."""
    from hpplug.cli import main

    out = tmp_path_factory.mktemp("named")
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:  # conftest's environment, for a module-scoped run
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("HPPLUG_OFFLINE", "1")
        mp.setenv("WANDB_CONFIG_DIR", str(tmp_path_factory.mktemp("wandb-config")))
        for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
            mp.delenv(name, raising=False)
        # W&B reads its variables once per process, when it is set up: before they are set here,
        # so that this process's later runs do not inherit them. hpplug passes what it read.
        wandb.setup()
        for name, value in VARIABLES.items():
            mp.setenv(name, value)
        with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit_info:
            main(["run", *QUICK, "--wandb-mode", "offline", "--output-dir", str(out),
                  "--name", "cli name", "--tags", "cli1, cli2"])
    assert exit_info.value.code == 0
    record = record_of(out)
    (run,) = [read_run(f, wait=30) for f in find_run_files(out / "wandb")]
    return {"out": out, "record": record, "run": run, "stdout": stdout.getvalue(),
            "config": json.loads((record / "config.json").read_text()),
            "rows": [json.loads(l) for l in (record / "metrics.jsonl").read_text().splitlines()]}


def test_the_command_line_wins_over_wandb_variables_and_they_over_the_defaults(named_run):
    run, config = named_run["run"], named_run["config"]
    assert (run.name, run.tags) == ("cli name", ["cli1", "cli2"])  # given on the command line
    assert (run.project, run.entity, run.group, run.notes) == (
        "env-project", "env-team", "env-group", "set in the environment")  # from the variables
    # the record holds what the run used: a resume or a rerun from config.json uses it again
    assert {k: config[k] for k in ("project", "entity", "name", "tags", "group", "notes")} == {
        "project": "env-project", "entity": "env-team", "name": "cli name", "tags": "cli1,cli2",
        "group": "env-group", "notes": "set in the environment"}


def test_settings_sit_apart_from_the_hyperparameters_and_config_json_stays_flat(named_run):
    run, config = named_run["run"], named_run["config"]
    assert set(run.config["settings"]) == set(SETTINGS)
    assert run.config["settings"]["log_every"] == 5 and run.config["settings"]["output_dir"] == str(named_run["out"])
    assert not set(SETTINGS) & set(run.config), "no setting among W&B's hyperparameters"
    assert (run.config["lr"], run.config["batch_size"], run.config["epochs"], run.config["mlp.hidden"]) == (
        0.1, 128, 2, 32)
    # config.json keeps every option by its flat name: it makes the same RunConfig again
    again = RunConfig(**{k: config[k] for k in RunConfig.field_names() if k != "plugin_params"})
    assert again.log_every == 5 and again.batch_size == 128 and again.tags == "cli1,cli2"


def test_versions_of_the_libraries_and_plugins_are_recorded(named_run):
    import accelerate

    import hpplug

    for versions in (named_run["run"].config["versions"], named_run["config"]["versions"]):
        assert versions["hpplug"] == hpplug.__version__ and versions["torch"] == torch.__version__
        assert versions["accelerate"] == accelerate.__version__ and versions["wandb"] == wandb.__version__
    assert set(named_run["run"].config["plugin_versions"]) == {"mlp", "digits"}


def test_metrics_are_declared_with_their_axis_and_best_value(named_run):
    run = named_run["run"]
    declared = {"train/loss": ["min"], "val/loss": ["min"], "test/loss": ["min"],
                "train/accuracy": ["max"], "val/accuracy": ["max"], "test/accuracy": ["max"], "lr": []}
    for key, summary in declared.items():
        assert run.metrics[key] == {"step_metric": "epoch", "summary": summary}, key
    assert "epoch" in run.metrics and all("epoch" in row for row in run.history)  # the axis is in every row
    epochs = [row for row in named_run["rows"] if "val/accuracy" in row]
    assert run.summary["val/accuracy"] == {"max": max(r["val/accuracy"] for r in epochs)}
    assert run.summary["val/loss"] == {"min": min(r["val/loss"] for r in epochs)}
    assert run.summary["status"] == "finished" and run.exit_code == 0


def test_the_run_says_where_it_is_in_wandb_when_it_starts_and_ends(named_run):
    """Online the line is the run's URL (``run.url``); offline the same code names the folder
    when it starts and the upload command when it ends."""
    record, lines = named_run["record"], named_run["stdout"].splitlines()
    (folder,) = sync_folders(named_run["stdout"])
    assert (Path(folder) / f"run-{record.name}.wandb").is_file()
    start = lines.index(f"W&B run {record.name}: offline, in {folder}")
    close = next(i for i, l in enumerate(lines) if l.startswith(f"run {record.name} finished: "))
    assert start < close and lines[close + 1].startswith("W&B run saved offline; upload it with: ")


# --- a run cut and resumed: every part is named, the best values span all parts ----------


class Probe(Plugin):
    """Logs an accuracy that is best in the first epoch, and fails the run at update ``fail_at``."""

    fail_at = -1

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        if progress.update == Probe.fail_at:
            raise RuntimeError(f"the probe ends the run at update {progress.update}")

    @hookimpl
    def hpplug_epoch_end(self, metrics, progress):
        return {"probe/accuracy": 1.0 / progress.epoch}


@pytest.mark.slow
def test_a_resumed_run_uploads_every_part_and_its_best_values_span_them(hpplug_register, hpplug_cli, tmp_path,
                                                                      monkeypatch):
    """Attempt 1 fails before its first checkpoint, attempt 2 (same WANDB_RUN_ID) after the one
    at update 30, then ``--resume``: the upload command names attempt 2's folder and the
    resume's (attempt 1 is kept aside with its W&B folder), and W&B's summary holds the best
    value over both parts."""
    hpplug_register("probe", Probe)
    monkeypatch.setenv("WANDB_RUN_ID", "cut1")
    argv = ["run", "--plugin", "probe", "--epochs", "3", "--log-every", "4", "--checkpoint-every", "10",
            "--wandb-mode", "offline", "--output-dir", str(tmp_path), "--name", "cut run", "--tags", "resumed"]
    try:
        for at in (5, 35):
            Probe.fail_at = at
            code, _, err = hpplug_cli(*argv)
            assert code == 1 and f"at update {at}" in err
    finally:
        Probe.fail_at = -1
    monkeypatch.delenv("WANDB_RUN_ID")
    record = tmp_path / "cut1"
    code, out, err = hpplug_cli("run", "--resume", str(record))
    assert code == 0, err

    folders = sync_folders(out)
    assert len(folders) == 2 and folders == sorted(folders)
    kept = list((record / "attempts" / "1" / "wandb").glob("offline-run-*/run-cut1.wandb"))
    assert len(kept) == 1, "attempt 1's W&B run is kept with its record, not uploaded as this run"
    cut, resumed = [read_run(Path(f) / "run-cut1.wandb", wait=30) for f in folders]
    assert [(r.name, r.tags) for r in (cut, resumed)] == [("cut run", ["resumed"])] * 2  # the resume keeps them
    assert max(r["_step"] for r in cut.history) < min(r["_step"] for r in resumed.history)
    assert resumed.metrics["probe/accuracy"] == {"step_metric": "epoch", "summary": ["max"]}
    assert [r["probe/accuracy"] for r in resumed.history if "probe/accuracy" in r] == [1 / 2, 1 / 3]
    assert resumed.summary["probe/accuracy"] == {"max": 1.0}, "the best value was logged before the cut"
    rows = [json.loads(l) for l in (record / "metrics.jsonl").read_text().splitlines()]
    assert resumed.summary["val/loss"] == {"min": min(r["val/loss"] for r in rows if "val/loss" in r)}
    assert resumed.exit_code == 0 and resumed.summary["status"] == "finished"


# --- a run that fails before training still closes its record ------------------------------


class Fragile(Plugin):
    def __init__(self, **values: Any) -> None:
        raise KeyError("missing-setting")


class BadConfig(Plugin):
    @hookimpl
    def hpplug_adjust_config(self, config):
        raise ValueError("cannot adjust")


class BadModel(Plugin):
    @hookimpl
    def hpplug_adjust_model(self, model, config):
        raise RuntimeError("cannot wrap")


class Misfit(Model):
    """A model for 3 features, on a data set of 64."""

    def build(self, input_shape, num_classes):
        return nn.Linear(3, num_classes)


FAILURES = {  # case: (arguments, exit code, what the error says)
    "no data": (["--dataset", "mnist", "--data-root", "nodata"], 2, "mnist is not in nodata"),
    "plugin __init__": (["--plugin", "fragile"], 1, "plugin 'fragile' failed in __init__: KeyError"),
    "adjust_config": (["--plugin", "bad-config"], 1, "plugin 'bad-config' failed in hpplug_adjust_config"),
    "adjust_model": (["--plugin", "bad-model"], 1, "plugin 'bad-model' failed in hpplug_adjust_model"),
    "model misfit": (["--model", "misfit"], 2, "the model cannot take this data set's inputs"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_run_that_fails_before_training_closes_its_record(case, hpplug_register, hpplug_cli, tmp_path,
                                                            monkeypatch):
    for name, cls in (("fragile", Fragile), ("bad-config", BadConfig), ("bad-model", BadModel),
                      ("misfit", Misfit)):
        hpplug_register(name, cls)
    monkeypatch.chdir(tmp_path)
    argv, expected_code, says = FAILURES[case]
    mode = "offline" if case == "no data" else "disabled"  # W&B once: the rest is the same path
    code, out, err = hpplug_cli("run", *argv, "--epochs", "1", "--wandb-mode", mode, "--output-dir", "runs")
    (line,) = err.strip().splitlines()
    assert code == expected_code and line.startswith("Error: ") and says in line, err
    record = record_of(tmp_path / "runs")
    summary = json.loads((record / "summary.json").read_text())
    assert summary["status"] == "failed" and "Error: " + summary["error"] == line
    closing = f"run {record.name} failed before training (its summary.json holds the error); record in runs/{record.name}"
    assert closing in out.splitlines()
    if mode == "offline":
        (folder,) = sync_folders(out)
        run = read_run(Path(folder) / f"run-{record.name}.wandb", wait=30)
        assert run.exit_code == 1 and run.summary["status"] == "failed" and run.summary["error"] == summary["error"]


def test_a_run_whose_wandb_folder_cannot_be_made_closes_its_record(hpplug_cli, tmp_path, monkeypatch):
    """W&B fails to start once the record is open: the record says so, and the run closes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "wandb").write_text("a file where W&B's folder goes\n")
    code, out, err = hpplug_cli("run", "--epochs", "1", "--wandb-mode", "offline", "--output-dir", "runs")
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith("Error: cannot write runs/wandb: Not a directory"), err
    record = record_of(tmp_path / "runs")
    assert json.loads((record / "summary.json").read_text()) == {"status": "failed", "error": line[len("Error: "):]}
    assert f"run {record.name} failed before training" in out


# --- bad names and variables: one line, before anything is written -------------------------


BAD = {  # case: (arguments, environment, what the line says)
    "WANDB_TAGS empty tag": ([], {"WANDB_TAGS": "a,,b"}, "WANDB_TAGS"),
    "WANDB_PROJECT slash": ([], {"WANDB_PROJECT": "team/project"}, "WANDB_PROJECT"),
    "WANDB_NAME newline": ([], {"WANDB_NAME": "two\nlines"}, "WANDB_NAME"),
    "--tags empty tag": (["--tags", "a,,b"], {}, "a W&B tag must not be empty"),
    "--tags too long": (["--tags", "ok," + "t" * 65], {}, "is 65 characters; W&B allows at most 64"),
    "--tags not a list": (["--tags", "['a',"], {}, "is not a list such as"),
    "--name empty": (["--name", " "], {}, "a W&B name must not be empty"),
    "--group control": (["--group", "a\tb"], {}, "control characters"),
    "--entity slash": (["--entity", "a/b"], {}, "W&B names cannot contain /"),
}


@pytest.mark.parametrize("mode", ["offline", "disabled"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_names_and_variables_are_one_line_before_anything_is_written(case, mode, hpplug_cli, tmp_path,
                                                                         monkeypatch):
    argv, environ, says = BAD[case]
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    code, out, err = hpplug_cli("run", *argv, "--wandb-mode", mode, "--output-dir", str(tmp_path / "runs"))
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith("Error: ") and says in line, err
    assert "Traceback" not in out + err and not (tmp_path / "runs").exists()


def test_tags_take_what_wandb_agent_writes_and_an_empty_text_clears_them(hpplug_cli, tmp_path, monkeypatch):
    from hpplug.config import OPTION_TYPES

    assert OPTION_TYPES["tags"].convert("['a', 'b c']", None, None) == "a,b c"  # --tags=['a', 'b c']
    assert OPTION_TYPES["tags"].convert(["x", " y "], None, None) == "x,y"  # a YAML list
    monkeypatch.setenv("WANDB_TAGS", "from-env")
    code, _, err = hpplug_cli("run", "--tags", "", *QUICK, "--wandb-mode", "disabled",
                              "--output-dir", str(tmp_path))
    assert code == 0, err
    assert json.loads((record_of(tmp_path) / "config.json").read_text())["tags"] == ""


# --- a sweep sets settings by their flat names, as wandb agent passes them -----------------


@pytest.mark.slow
def test_a_sweep_sets_a_setting_and_a_hyperparameter_by_their_flat_names(tmp_path):
    """Under ``wandb agent`` W&B's config is the sweep's: a setting it sets (``log_every``)
    reaches the run as a hyperparameter does, and W&B's settings show the value used."""
    from wandb.sdk.lib import config_util

    params = tmp_path / "sweep-params.yaml"
    config_util.save_config_file_from_dict(str(params), {"log_every": {"value": 7}, "lr": {"value": 0.05}})
    env = {**os.environ, "WANDB_SWEEP_ID": "swp1", "WANDB_SWEEP_PARAM_PATH": str(params), "WANDB_RUN_ID": "trial1",
           "WANDB_BASE_URL": "http://127.0.0.1:9"}  # a fresh process: W&B reads the sweep's variables
    proc = subprocess.run([sys.executable, "-m", "hpplug", "run", "--log_every=5", "--lr=0.1", "--epochs=1",
                           "--wandb-mode", "offline", "--output-dir", str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = tmp_path / "runs" / "trial1"
    config = json.loads((record / "config.json").read_text())
    assert (config["log_every"], config["lr"]) == (7, 0.05)
    (run,) = [read_run(f, wait=30) for f in find_run_files(tmp_path / "runs" / "wandb")]
    assert run.config["settings"]["log_every"] == 7 and run.config["lr"] == 0.05
    steps = [json.loads(l)["step"] for l in (record / "metrics.jsonl").read_text().splitlines()
             if "val/accuracy" not in l and "test/accuracy" not in l]
    assert steps and all(step % 7 == 0 for step in steps)


def test_the_readme_documents_each_wandb_variable_and_option():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in [*VARIABLES, "--name", "--tags", "--group", "--notes", "--entity", "define_metric", "settings"]:
        assert re.search(re.escape(name), readme), name
