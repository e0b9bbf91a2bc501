"""Bad values are refused before anything trains or is written: one line, exit code 2.

NaN and infinity in any float (command line, plugin parameters, a sweep's W&B config),
seeds numpy cannot take, sizes that cannot be allocated, names W&B or the file system would
reject, W&B environment variables W&B's own settings refuse, folders that are files.
"""

from __future__ import annotations

import json

import pytest

from hpplug import discovery
from hpplug.cli import run_command
from hpplug.config import WANDB_FORBIDDEN, RunConfig, WandbName
from hpplug.errors import HpplugError
from hpplug.run_args import sweep_overrides

QUICK = ("--epochs", "1", "--wandb-mode", "disabled")


@pytest.mark.parametrize(("argv", "says"), [
    (["--lr", "nan"], "'--lr': 'nan' is not a finite number"),
    (["--lr", "inf"], "'--lr': 'inf' is not a finite number"),
    (["--lr", "-inf"], "'--lr': '-inf' is not a finite number"),
    (["--lr", "1e400"], "'--lr': '1e400' is not a finite number"),
    (["--momentum", "nan"], "'--momentum': 'nan' is not a finite number"),
    (["--momentum", "1e400"], "'--momentum': '1e400' is not a finite number"),
    (["--plugin", "cosine", "--cosine.eta_min=nan"], "--cosine.eta_min: 'nan' is not a finite number"),
    (["--plugin", "normalize", "--normalize.std=0.5,inf"], "--normalize.std: '0.5,inf' is not a finite number"),
    (["--seed", "-1"], "-1 is not in the range 0<=x<=4294967295"),
    (["--seed", str(2**32)], "4294967296 is not in the range 0<=x<=4294967295"),
    (["--log-every", str(10**30)], "torch and W&B store integers up to 2**63 - 1"),
    (["--batch-size", "1e3"], "'1e3' is not a valid integer"),
])
def test_non_finite_and_out_of_range_numbers(refused, argv, says) -> None:
    assert says in refused("run", *argv, *QUICK).line


@pytest.mark.parametrize(("argv", "says"), [
    (["--mlp.hidden", "1000000000"], "75,000,000,010 parameters"),
    (["--mlp.hidden", str(10**16)], "750,000,000,000,000,010 parameters"),
    # A batch bigger than the training set is only as big as it (1,293 after the validation
    # hold-out), and with 3,000,000 hidden units that still cannot fit.
    (["--mlp.hidden", "3000000", "--batch-size", str(10**9)], "a batch of 1293 samples"),
])
def test_a_run_that_cannot_fit_in_memory_says_how_much_it_needs(refused, sandbox, argv, says) -> None:
    """Checked once the data's shape is known, before anything is allocated: the run's record
    holds the refusal (a run that fails before training still has a record)."""
    line = refused("run", *argv, *QUICK, allowed=sandbox.runs).line
    assert says in line and "of memory but only" in line and " GB is free " in line
    assert ("lower --batch-size" if "--batch-size" in argv else "make the model smaller") in line
    assert failed_summary(sandbox)["error"] in line


def test_a_model_too_large_to_count_is_refused(refused, sandbox) -> None:
    line = refused("run", "--mlp.hidden", str(2**62), *QUICK, allowed=sandbox.runs).line
    assert "the model cannot be built that large" in line
    assert failed_summary(sandbox)["status"] == "failed"


def failed_summary(sandbox) -> dict:
    """The summary of the one new record a refused run left beside the earlier one."""
    (record,) = [p for p in sandbox.runs.iterdir() if p != sandbox.earlier and p.name != "wandb"]
    summary = json.loads((record / "summary.json").read_text())
    assert summary["status"] == "failed" and summary.get("updates", 0) == 0
    return summary


def test_more_micro_batches_than_samples_is_refused(refused, sandbox) -> None:
    line = refused("run", "--grad-accum", str(10**9), *QUICK, allowed=sandbox.runs).line
    assert "--grad-accum 1000000000" in line and "at most 1293 micro-batches" in line


def test_huge_batch_sizes_that_can_work_do(hpplug_cli, sandbox) -> None:
    """Refuse only what cannot work: batches larger than the data are the whole data set."""
    code, out, err = hpplug_cli("run", "--batch-size", str(10**9), "--eval-batch-size", str(10**12), *QUICK)
    assert code == 0, err
    (record,) = set(sandbox.runs.iterdir()) - {sandbox.earlier}
    summary = json.loads((record / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["updates"] == 1


@pytest.mark.parametrize("char", list(WANDB_FORBIDDEN))
def test_project_names_wandb_forbids(refused, char) -> None:
    line = refused("run", "--project", f"a{char}b", *QUICK).line
    assert f"W&B names cannot contain {char}" in line


@pytest.mark.parametrize(("project", "says"), [("x" * 129, "is 129 characters; W&B allows at most 128"),
                                               ("", "a W&B name must not be empty"),
                                               ("a\nb", "control characters")])
def test_project_names_too_long_or_empty(refused, project, says) -> None:
    assert says in refused("run", "--project", project, *QUICK).line


@pytest.mark.parametrize("name", ["a/b", "a\\b", "a#b", "a:b", "x" * 129, "fine-name", "x" * 128])
def test_the_project_rule_is_wandbs_own(name) -> None:
    """Our check agrees with W&B's settings validation on every forbidden character and length."""
    import wandb

    try:
        wandb.Settings(project=name)
        wandb_accepts = True
    except Exception:  # noqa: BLE001 - wandb raises UsageError (or a pydantic error)
        wandb_accepts = False
    try:
        WandbName().convert(name, None, None)
        ours = True
    except Exception:  # noqa: BLE001
        ours = False
    assert ours == wandb_accepts


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--output-dir", "notes.txt", "notes.txt is a file, not a folder"),
    ("--output-dir", "notes.txt/runs", "notes.txt is a file, not a folder, so notes.txt/runs cannot be a folder"),
    ("--data-root", "notes.txt", "notes.txt is a file, not a folder"),
    ("--data-root", "notes.txt/data", "notes.txt is a file, not a folder"),
    ("--output-dir", "", "an empty path"),
    ("--output-dir", "x" * 300 + "/runs", "File name too long"),
])
def test_folders_that_are_files(refused, option, value, says) -> None:
    assert says in refused("run", option, value, *QUICK).line


@pytest.mark.parametrize(("name", "value", "says"), [
    ("WANDB_MODE", "bogus", "Input should be 'online', 'offline'"),
    ("WANDB_SILENT", "", "Input should be a valid boolean"),
    ("WANDB_CONSOLE", "loud", "Input should be 'auto', 'off'"),
    ("WANDB_INIT_TIMEOUT", "soon", "Input should be a valid number"),
])
def test_wandb_environment_values_wandb_refuses(refused, monkeypatch, name, value, says) -> None:
    monkeypatch.setenv(name, value)
    line = refused("run", "--epochs", "1", "--wandb-mode", "offline").line
    assert f"environment variable {name}={value!r} is refused by W&B: {says}" in line
    assert "correct or unset it" in line


@pytest.mark.parametrize("run_id", ["../../escape", "..", "a/b", ".hidden", "x" * 129])
def test_a_run_id_that_would_leave_the_output_dir(refused, monkeypatch, run_id) -> None:
    monkeypatch.setenv("WANDB_RUN_ID", run_id)
    line = refused("run", *QUICK).line
    assert line.startswith("Error: WANDB_RUN_ID ") and "is not a run id" in line


def test_a_bad_wandb_mode_through_the_console_script(refused_process) -> None:
    line = refused_process("run", "--epochs", "1", env={"WANDB_MODE": "bogus"}).line
    assert "WANDB_MODE='bogus' is refused by W&B" in line


@pytest.mark.parametrize(("values", "says"), [
    ({"lr": float("nan")}, "W&B config lr=nan: nan is not a finite number"),
    ({"lr": float("inf")}, "W&B config lr=inf: inf is not a finite number"),
    ({"momentum": "nan"}, "W&B config momentum='nan': 'nan' is not a finite number"),
    ({"batch_size": float("inf")}, "W&B config batch_size=inf: inf is not an integer"),
    ({"batch_size": 64.5}, "W&B config batch_size=64.5: 64.5 is not an integer"),
    ({"seed": -1}, "W&B config seed=-1: -1 is not in the range 0<=x<=4294967295"),
    ({"project": "a/b"}, "W&B config project='a/b': 'a/b': W&B names cannot contain /"),
    ({"batch_size": [64]}, "W&B config batch_size=[64]: [64] is not an integer"),
    ({"lr": {"min": 0.1}}, "W&B config lr={'min': 0.1}: {'min': 0.1} is not a number"),
    ({"plugin": ["cosine"], "cosine.eta_min": float("nan")}, "--cosine.eta_min: nan is not a finite number"),
])
def test_a_sweeps_wandb_config_goes_through_the_same_types(values, says) -> None:
    with pytest.raises(HpplugError) as info:
        sweep_overrides(discovery.discover())(RunConfig(), values)
    assert says in str(info.value)


@pytest.mark.parametrize(("argv", "says"), [
    (["../evil"], "plugin name '../evil': use lowercase letters"),
    (["a/b"], "plugin name 'a/b'"),
    (["/tmp/abs"], "plugin name '/tmp/abs'"),
    ([".."], "plugin name '..'"),
    (["x" * 65], "at most 64 characters"),
    (["ok", "--directory", "notes.txt"], "notes.txt is a file, not a folder"),
    (["ok", "--directory", "notes.txt/sub"], "so notes.txt/sub cannot be a folder"),
])
def test_new_plugin_never_writes_outside_its_folder(refused, argv, says) -> None:
    assert says in refused("new-plugin", *argv).line


def test_every_core_option_converts_through_a_checked_type() -> None:
    """No option may fall back to click's unchecked FLOAT/INT, which take nan, inf and 64.5."""
    import click

    for param in run_command({}).params:
        if isinstance(param.type, (click.types.FloatParamType, click.types.IntParamType)):
            assert type(param.type).__module__ == "hpplug.config", f"{param.name}: {param.type!r}"
