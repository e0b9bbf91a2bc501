"""Sweep YAMLs without training: the shipped ones, bad ones, templates, command lines."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sweeps
import yaml
from wandb.sdk.launch.sweeps import utils as wandb_sweep_utils

from hpplug.cli import run_command
from hpplug.manager import discover
from hpplug.run_args import build_config
from hpplug.sweep.checks import problems, warnings_for
from hpplug.sweep.macros import args_macros, expand_command, with_envvars
from hpplug.sweep.spec import SweepSpec, load, pretty_command, trial_values
from hpplug.sweep.template import template

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.fixture(scope="module")
def catalog() -> dict[str, Any]:
    return discover()


def spec_of(tmp_path: Path, text: str) -> SweepSpec:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    spec, found = load(path)
    assert spec is not None, found
    return spec


def test_the_issue_asks_for_these_sweeps() -> None:
    names = {p.name for p in SHIPPED}
    assert {"seed-grid.yaml", "bayes.yaml", "random.yaml", "multi-gpu.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_sweeps_are_valid(path: Path, catalog: dict[str, Any]) -> None:
    spec, found = load(path)
    assert spec is not None and problems(spec, catalog) == []
    assert spec.metric == "val/accuracy" and spec.goal == "maximize"  # tuned on validation, never on test
    assert "hpplug" in spec.raw["command"] and "${args}" in spec.raw["command"]
    argv = expand_command(spec.raw["command"], trial_values(spec, sweeps.next_run(spec.raw, []).config))
    assert "run" in argv and any(a.startswith("--lr=") for a in argv)


def test_shipped_sweeps_cover_the_issue(catalog: dict[str, Any]) -> None:
    grid = load(ROOT / "sweeps" / "seed-grid.yaml")[0].raw
    assert grid["method"] == "grid"
    assert grid["parameters"]["plugin"]["values"] == [["step", "dropout"], ["cosine", "dropout"]]
    assert {"lr", "dropout.p"} <= set(grid["parameters"])
    bayes = load(ROOT / "sweeps" / "bayes.yaml")[0].raw
    assert bayes["method"] == "bayes" and bayes["early_terminate"]["type"] == "hyperband"
    assert bayes["parameters"]["lr"]["distribution"] == "log_uniform_values"
    assert {"batch_size", "lr-scaling.rule", "dropout.p", "weight-decay.weight_decay",
            "label-smoothing.smoothing"} <= set(bayes["parameters"])
    with_aug = [c for c in bayes["parameters"]["plugin"]["values"] if "crop" in c]
    assert with_aug and len(with_aug) < len(bayes["parameters"]["plugin"]["values"])  # augmentation on/off
    multi = load(ROOT / "sweeps" / "multi-gpu.yaml")[0].raw["command"]
    assert multi[:5] == ["${env}", "accelerate", "launch", "--multi_gpu", "--num_processes"]
    cpu = load(ROOT / "sweeps" / "cpu-2proc.yaml")[0].raw["command"]
    assert "ACCELERATE_USE_CPU=1" in cpu and "torchrun" in cpu


def test_multi_process_trials_keep_their_launcher(tmp_path: Path) -> None:
    spec = load(ROOT / "sweeps" / "cpu-2proc.yaml")[0]
    argv = expand_command(spec.raw["command"], {"lr": 0.1}, ["--output-dir=/x"])
    i = argv.index("torchrun")
    assert argv[:i] == ["/usr/bin/env", "ACCELERATE_USE_CPU=1"]
    assert argv[i:] == ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "hpplug", "run",
                        "--lr=0.1", "--output-dir=/x"]


def test_trial_command_is_what_wandb_agent_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same rendering as the agent; only a leading ``hpplug`` becomes this interpreter."""
    command = ["${env}", "hpplug", "run", "--seed", "${envvar:HPPLUG_TEST_SEED}", "${args}"]
    values = {"lr": 0.1, "plugin": ["cosine", "dropout"], "weight-decay.exclude_norm_and_bias": False,
              "cosine.eta_min": 1e-05}
    monkeypatch.setenv("HPPLUG_TEST_SEED", "3")
    argv = expand_command(command, values, ["--output-dir=o"])
    agent = wandb_sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    assert argv == ["/usr/bin/env", sys.executable, "-m", "hpplug", "run", "--seed", "3",
                    *agent["args"], "--output-dir=o"]
    assert "--plugin=['cosine', 'dropout']" in argv and "--cosine.eta_min=1e-05" in argv


def test_unchosen_plugin_parameters_are_not_passed(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "method: grid\nparameters:\n  plugin: {values: [[step], [cosine]]}\n"
                             "  step.gamma: {value: 0.5}\n  cosine.eta_min: {value: 0.001}\n  lr: {value: 0.1}\n"
                             'command: ["${env}", hpplug, run, "${args}"]\n')
    config = {"plugin": {"value": ["step"]}, "step.gamma": {"value": 0.5}, "cosine.eta_min": {"value": 0.001},
              "lr": {"value": 0.1}}
    assert trial_values(spec, config) == {"plugin": ["step"], "step.gamma": 0.5, "lr": 0.1}


def test_best_command_line_is_ready_to_run(tmp_path: Path, catalog: dict[str, Any]) -> None:
    spec = load(ROOT / "sweeps" / "seed-grid.yaml")[0]
    values = {"plugin": ["cosine", "dropout"], "lr": 0.05, "dropout.p": 0.2, "cosine.eta_min": 0.0001,
              "dataset": "mnist", "epochs": 20}
    line = pretty_command(spec, values)
    words = shlex.split(line)
    assert words[:2] == ["hpplug", "run"]
    ctx = run_command(catalog).make_context("run", words[2:])
    params = dict(ctx.params)
    raw = {"cosine": {"eta_min": params.pop("cosine__eta_min")}, "dropout": {"p": params.pop("dropout__p")}}
    config, _ = build_config(catalog, ["cosine", "dropout"], raw,
                             {k: v for k, v in params.items()
                              if "__" not in k and k not in ("plugin", "resume", "config_file", "print_config")})
    assert params["plugin"] == ("cosine,dropout",)
    assert (config.lr, config.epochs, config.dataset) == (0.05, 20, "mnist")
    assert config.plugin_params == {"cosine": {"t_max": None, "eta_min": 0.0001, "interval": "epoch"},
                                    "dropout": {"p": 0.2}, "mlp": {"hidden": 500}, "mnist": {}}


BAD = """
method: grid
command: ["${env}", hpplug, run, "${args}"]
parameters:
  lrr: {values: [0.1]}
  lr: {distribution: uniform, min: 0.01, max: 1.0}
  batch_size: {values: [32, 0]}
  cosine.eta_mni: {value: 0.1}
  dropout.p: {values: [0.5, 1.5]}
  plugin: {values: [[cosinus, dropout], [step, cosine]]}
  opt: {parameters: {name: {value: sgd}}}
  restarts.t_0: {value: 3}
"""


def test_bad_yaml_lists_every_problem(tmp_path: Path, catalog: dict[str, Any]) -> None:
    found = problems(spec_of(tmp_path, BAD), catalog)
    expected = ["metric: missing; tune on val/accuracy", "parameters.lrr: not an option of hpplug run; did you mean 'lr'?",
                "parameters.lr: grid search needs values", "parameters.batch_size: 0:",
                "parameters.cosine.eta_mni: cosine has no parameter 'eta_mni'", "parameters.dropout.p: 1.5:",
                "unknown plugin 'cosinus'",  # the first refused value of a parameter; one line each
                "parameters.opt: nested parameter blocks", "parameters.restarts.t_0: plugin 'restarts' is never selected"]
    assert len(found) == len(expected)
    for text in expected:
        assert any(text in f for f in found), (text, found)


@pytest.mark.parametrize("text, expected", [
    ("method: [", "not valid YAML"),
    ("- a list", "must be a YAML mapping"),
    ("method: hyper\nmetric: {name: test/accuracy}\nparameters: {lr: {values: [0.1]}}\n"
     'command: ["${env}", hpplug, run, "${args}"]', "method: 'hyper' is not one of grid, random, bayes"),
    ("method: bayes\nmetric: {name: test/accuracy}\nparameters: {lr: {min: 0.5, max: 0.1}}\n"
     'command: ["${env}", hpplug, run, "${args}"]', "parameters.lr: min 0.5 must be less than max 0.1"),
    ("method: random\nmetric: {name: test/accuracy}\nparameters: {lr: {values: [0.1]}}\n"
     "command: [python, train.py]", "must pass the trial's parameters with ${args}"),
    ("method: random\nmetric: {name: test/accuracy}\nparameters: {lr: {values: [0.1]}}\n",
     "command: missing"),
    ("method: random\nmetric: {name: test/accuracy}\nparameters: {plugin: {values: [[dropout], [step, cosine]]}}\n"
     'command: ["${env}", hpplug, run, "${args}"]', "plugins step, cosine all claim the lr-schedule slot"),
    ("method: grid\nmetric: {name: test/accuracy}\nparameters: {lr: {values: [0.1]}}\n"
     "early_terminate: {type: hyperband, min_iter: 0}\ncommand: [\"${env}\", hpplug, run, \"${args}\"]",
     "schema:"),
])
def test_bad_yaml_cases(tmp_path: Path, catalog: dict[str, Any], text: str, expected: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    spec, found = load(path)
    found = found if spec is None else problems(spec, catalog)
    assert any(expected in f for f in found), found


def test_bad_yaml_exits_2_before_any_trial(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD)
    out = subprocess.run([sys.executable, "-m", "hpplug", "sweep", "bad.yaml", "--dir", "sw"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "bad.yaml cannot run as a sweep (9 problems):" in out.stderr
    assert "  - parameters.lrr: not an option of hpplug run" in out.stderr
    assert not (tmp_path / "sw").exists() and "Traceback" not in out.stderr


@pytest.mark.parametrize("method", ["bayes", "random", "grid"])
def test_template_is_a_valid_sweep(tmp_path: Path, catalog: dict[str, Any], method: str) -> None:
    plugins = ["cosine", "dropout", "weight-decay", "lr-scaling", "crop"]
    text = template(catalog, plugins, method)
    spec = spec_of(tmp_path, text)
    assert problems(spec, catalog) == []
    assert spec.raw["metric"] == {"name": "val/accuracy", "goal": "maximize"}  # never tuned on the test set
    assert warnings_for(spec) == []
    params = spec.parameters
    assert spec.raw["method"] == method and params["plugin"] == {"value": plugins}
    assert {"lr", "batch_size", "epochs"} <= set(params)
    assert "# probability of zeroing each hidden activation in training" in text  # the declared help
    if method == "grid":
        assert all("distribution" not in p for p in params.values())
    else:
        assert params["lr"]["distribution"] == "log_uniform_values"
        assert params["weight-decay.weight_decay"] == {"distribution": "log_uniform_values",
                                                      "min": 5e-05, "max": 0.005}  # around 5e-4
        assert params["dropout.p"]["distribution"] == "uniform"
        assert params["cosine.interval"] == {"values": ["epoch", "update"]}
        assert params["weight-decay.exclude_norm_and_bias"] == {"values": [True, False]}


def test_template_command(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "hpplug", "sweep", "--template", "--plugin", "cosine",
                          "--plugin", "dropout", "-o", "t.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load((tmp_path / "t.yaml").read_text())
    assert config["method"] == "bayes" and config["parameters"]["plugin"] == {"value": ["cosine", "dropout"]}
    assert "cosine.eta_min" in config["parameters"] and "dropout.p" in config["parameters"]


def test_unknown_plugin_in_template_is_one_line(catalog: dict[str, Any]) -> None:
    from hpplug.errors import HpplugError

    with pytest.raises(HpplugError, match="unknown plugin 'cosinus'"):
        template(catalog, ["cosinus"])


@pytest.mark.parametrize("values", [
    {},
    {"lr": 0.1, "epochs": 3, "name": "a b", "empty": ""},
    {"flag": True, "off": False, "none": None, "plugin": ["cosine", "dropout"], "nested": {"a": [1, 2.5]}},
    {"cosine.eta_min": 1e-05, "big": 10 ** 20, "neg": -3, "unicode": "é"},
])
def test_macros_are_wandbs_own(values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every format of ${args} and ${envvar:NAME} renders as W&B's agent code renders it."""
    agent = wandb_sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    assert args_macros(values) == agent
    monkeypatch.setenv("HPPLUG_TEST_A", "x y")
    monkeypatch.delenv("HPPLUG_TEST_UNSET", raising=False)
    command = ["run", "--a=${envvar:HPPLUG_TEST_A}", "${envvar:HPPLUG_TEST_UNSET}/${envvar:HPPLUG_TEST_A}", "${args}"]
    assert with_envvars(command) == wandb_sweep_utils.create_sweep_command(list(command))
