"""What ``wandb agent`` runs reaches the run: tested with W&B's own code, no server.

The child command is built exactly as ``wandb.wandb_agent.Agent._command_run`` builds it
(``create_sweep_command`` + ``create_sweep_command_args`` + its macro loop, the sweep
parameter file written by ``config_util.save_config_file_from_dict``, and the same
environment), from a configuration W&B's engine suggests for ``sweeps/seed-grid.yaml``.
The command then really runs; the run record and the offline ``.wandb`` file say what trained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sweeps
import yaml
from wandb.sdk.launch.sweeps import utils as wandb_sweep_utils
from wandb.sdk.lib import config_util

from hpplug.wandb_file import find_run_files, read_run

ROOT = Path(__file__).resolve().parents[1]


def agent_argv(command: list[Any], args: dict[str, dict[str, Any]]) -> list[str]:
    """The argv ``wandb agent`` runs (wandb/wandb_agent.py, Agent._command_run)."""
    sweep_command = wandb_sweep_utils.create_sweep_command(list(command))
    sweep_vars = wandb_sweep_utils.create_sweep_command_args({"args": args})
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [None]
    sweep_vars["env"] = ["/usr/bin/env"]
    command_list = []
    for c in sweep_command:
        c = str(c)
        if c.startswith("${") and c.endswith("}"):
            command_list += sweep_vars.get(c[2:-1]) or []
        else:
            command_list += [c]
    return command_list


def run_as_agent(tmp_path: Path, command: list[Any], argv_args: dict[str, Any],
                 sweep_args: dict[str, Any], run_id: str) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
    """Run what the agent would, in ``tmp_path``; returns (config.json, W&B run, metrics rows)."""
    argv = agent_argv(command, argv_args)
    param_path = tmp_path / "wandb" / "sweep-swp12345" / f"config-{run_id}.yaml"
    config_util.save_config_file_from_dict(str(param_path), sweep_args)
    env = {**os.environ, "WANDB_SWEEP_ID": "swp12345", "WANDB_RUN_ID": run_id,
           "WANDB_SWEEP_PARAM_PATH": str(param_path), "WANDB_MODE": "offline",
           "WANDB_BASE_URL": "http://127.0.0.1:9",  # any attempt to reach a server fails fast
           "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    record = tmp_path / "runs" / run_id
    (wandb_file,) = find_run_files(tmp_path / "runs")
    rows = [json.loads(line) for line in (record / "metrics.jsonl").read_text().splitlines()]
    return json.loads((record / "config.json").read_text()), read_run(wandb_file), rows


@pytest.fixture(scope="module")
def seed_grid() -> dict[str, Any]:
    """sweeps/seed-grid.yaml, on the bundled digits for 1 epoch so that a test can train it."""
    config = yaml.safe_load((ROOT / "sweeps" / "seed-grid.yaml").read_text())
    config["parameters"]["dataset"] = {"value": "digits"}
    config["parameters"]["epochs"] = {"value": 1}
    return config


def test_agent_command_reaches_the_run(tmp_path: Path, seed_grid: dict[str, Any]) -> None:
    suggestion = sweeps.next_run(seed_grid, [], validate=False).config  # W&B's first grid point
    values = {k: v["value"] for k, v in suggestion.items()}
    assert values["plugin"] == ["step", "dropout"] and "cosine.eta_min" in values
    argv = agent_argv(seed_grid["command"], suggestion)
    assert "--plugin=['step', 'dropout']" in argv and "--step.step_size=10" in argv  # what the agent writes

    config, run, rows = run_as_agent(tmp_path, seed_grid["command"], suggestion, suggestion, "agent001")
    for trained in (config, run.config):
        assert trained["plugins"] == ["step", "dropout"]
        assert trained["lr"] == values["lr"] and trained["dropout.p"] == values["dropout.p"]
        assert trained["step.step_size"] == 10 and trained["step.gamma"] == 0.1
        assert trained["dataset"] == "digits" and trained["epochs"] == 1
    assert "cosine.eta_min" not in config  # a parameter of the plugin this trial did not choose
    assert {r["lr"] for r in rows if "lr" in r} == {values["lr"]}
    assert run.run_id == "agent001" and run.exit_code == 0
    assert run.summary["test/accuracy"] == {"max": json.loads((tmp_path / "runs" / "agent001" / "summary.json").read_text())["test/accuracy"]}


def test_sweep_values_win_over_argv(tmp_path: Path, seed_grid: dict[str, Any]) -> None:
    """Inside a sweep wandb.config is the source of truth: argv says lr 0.5, the sweep 0.01."""
    sweep_args = {"lr": {"value": 0.01}, "plugin": {"value": ["dropout", "weight-decay"]},
                  "dropout.p": {"value": 0.25}, "weight-decay.exclude_norm_and_bias": {"value": False},
                  "epochs": {"value": 1}}
    argv_args = {**sweep_args, "lr": {"value": 0.5}, "dropout.p": {"value": 0.5}}
    argv = agent_argv(seed_grid["command"], argv_args)
    assert "--lr=0.5" in argv and "--weight-decay.exclude_norm_and_bias=False" in argv  # a boolean, as str()

    config, run, rows = run_as_agent(tmp_path, seed_grid["command"], argv_args, sweep_args, "agent002")
    assert {r["lr"] for r in rows if "lr" in r} == {0.01}  # trained with the sweep's value
    assert run.config["lr"] == 0.01 and run.config["effective_lr"] == 0.01 and run.config["dropout.p"] == 0.25
    assert run.config["weight-decay.exclude_norm_and_bias"] is False
    assert config["lr"] == 0.01 and config["dropout.p"] == 0.25  # the local record says so too
