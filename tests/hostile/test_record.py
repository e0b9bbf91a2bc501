"""The run record under hostile conditions: untrusted run ids and folders, a record that
already exists, damaged files, a full disk, and resumes that fail.

Refusals use the shared harness (exit 2, one ``Error:`` line, no traceback, nothing else
touched). A full disk is injected in a subprocess by ``tests/driver.py``
(``HPPLUG_TEST_ENOSPC_*``); after it, a resume must end exactly like a run never stopped.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hpplug import Plugin, hookimpl, record
from hpplug.errors import HpplugError, PluginError
from hpplug.wandb_file import find_run_files, read_run

from .conftest import assert_same_run, rows, snapshot

DRIVER = str(Path(__file__).parents[1] / "driver.py")
TINY = ["--epochs", "2", "--mlp.hidden", "32", "--log-every", "4", "--checkpoint-every", "10"]
COMMON = ["run", "--plugin", "killer", "--plugin", "disk-full", *TINY, "--wandb-mode", "disabled"]


def driver(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, DRIVER, *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The run failed with exit 2 and exactly one ``Error:`` line (epoch lines may precede it)."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    return errors[0]


def settle(sandbox) -> None:
    """What a case set up in the sandbox is part of what must stay untouched."""
    sandbox.before = snapshot(sandbox.root)


def record_with(sandbox, name: str, checkpoint: bool = True, summary: str | None = None) -> Path:
    """A copy of the earlier (finished) record under another id, made unfinished, with its
    real checkpoint or without one."""
    folder = sandbox.runs / name
    shutil.copytree(sandbox.earlier, folder)
    (folder / "summary.json").unlink()
    if summary is not None:
        (folder / "summary.json").write_text(summary)
    if not checkpoint:
        shutil.rmtree(folder / "checkpoint")
    return folder


# --- 1. run ids from outside ----------------------------------------------------------------

HOSTILE_IDS = {
    "slash": "a/b",
    "parent": "../../x",
    "absolute": "/tmp/hpplug-escape",
    "dot": ".",
    "dotdot": "..",
    "empty": "",
    "long": "x" * 5000,
    "newline": "abc\ndef",
    "escape": "abc\x1b[31mred",
    "nul-like": "abc\x7f",
    "reserved": "wandb",
    "dash": "-rf",
    "spaces": " abc ",
    "backslash": "a\\b",
    "unicode": "r\u00fcn",
}


@pytest.mark.parametrize("run_id", HOSTILE_IDS.values(), ids=HOSTILE_IDS.keys())
def test_wandb_run_id_that_is_not_a_plain_id_is_refused(run_id, refused, monkeypatch):
    monkeypatch.setenv("WANDB_RUN_ID", run_id)
    outcome = refused("run", "--epochs", "1", "--wandb-mode", "disabled", "--output-dir", "runs")
    assert "WANDB_RUN_ID" in outcome.line and len(outcome.line) < 400
    assert not Path("/tmp/hpplug-escape").exists()


def test_wandb_run_id_refused_in_a_fresh_process(refused_process):
    refused_process("run", "--epochs", "1", "--wandb-mode", "disabled", "--output-dir", "runs",
                    env={"WANDB_RUN_ID": "../../escape"})


# --- 1. --resume DIR that is not a run record -----------------------------------------------


def test_resume_of_a_folder_whose_name_is_not_a_run_id(refused, sandbox):
    record_with(sandbox, "bad name")
    settle(sandbox)
    assert "folder name" in refused("run", "--resume", "runs/bad name").line


@pytest.mark.parametrize("target", ["runs/wandb", "notes.txt", ".", "runs", "runs/missing"])
def test_resume_of_something_that_is_not_a_run_record(target, refused, sandbox):
    (sandbox.runs / "wandb").mkdir()
    settle(sandbox)
    refused("run", "--resume", target)


def test_resume_of_a_finished_run(refused, sandbox):
    assert "already ended (finished)" in refused("run", "--resume", str(sandbox.earlier)).line


def test_resume_of_a_record_without_checkpoint(refused, sandbox):
    record_with(sandbox, "nockpt", checkpoint=False)
    settle(sandbox)
    assert "checkpoint" in refused("run", "--resume", "runs/nockpt").line


def test_resume_through_a_link(refused, sandbox):
    real = record_with(sandbox, "real1")
    (sandbox.runs / "link1").symlink_to(real)
    settle(sandbox)
    assert "link" in refused("run", "--resume", "runs/link1").line


DAMAGE = {
    "summary-garbage": ("summary.json", b"{\"status\": \"interr"),
    "summary-array": ("summary.json", b"[1, 2]"),
    "config-empty": ("config.json", b""),
    "config-binary": ("config.json", b"\xff\xfe\x00garbage"),
    "metrics-middle": ("metrics.jsonl", b'{"step": 1, "a": 1}\nnot json\n{"step": 3, "a": 1}\n'),
    "metrics-no-step": ("metrics.jsonl", b'{"a": 1}\n'),
    "run-json-garbage": ("checkpoint/run.json", b"\x00\x00\x00"),
    "run-json-no-config": ("checkpoint/run.json", b'{"cfg": {}}'),
    "run-json-missing": ("checkpoint/run.json", None),
}


@pytest.mark.parametrize("name,content", DAMAGE.values(), ids=DAMAGE.keys())
def test_resume_of_a_damaged_record_names_the_file(name, content, refused, sandbox):
    folder = record_with(sandbox, "damaged")
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(content)
    settle(sandbox)
    line = refused("run", "--resume", "runs/damaged").line
    assert str(folder / name.split("/")[0]) in line


def test_resume_auto_refuses_a_damaged_newest_candidate(refused, sandbox):
    record_with(sandbox, "older1")
    os.utime(sandbox.runs / "older1" / "checkpoint", (1, 1))
    record_with(sandbox, "newer1", summary="{garbage")
    settle(sandbox)
    assert "newer1/summary.json" in refused("run", "--resume", "auto", "--output-dir", "runs").line


def test_resume_auto_with_nothing_to_resume(refused):
    refused("run", "--resume", "auto", "--output-dir", "runs")


# --- 2. a run id that already has a record ---------------------------------------------------


def test_run_id_of_a_finished_run_is_refused(refused, sandbox, monkeypatch):
    monkeypatch.setenv("WANDB_RUN_ID", sandbox.earlier.name)
    line = refused("run", "--epochs", "1", "--wandb-mode", "disabled", "--output-dir", "runs").line
    assert "already ended (finished" in line and "another run id" in line


@pytest.mark.parametrize("kind", ["file", "user-folder", "link"])
def test_run_id_naming_something_that_is_not_a_record_is_refused(kind, refused, sandbox, monkeypatch):
    target = sandbox.runs / "data"
    if kind == "file":
        target.write_text("the user's\n")
    elif kind == "user-folder":
        target.mkdir()
        (target / "images.bin").write_bytes(b"\x00" * 10)
    else:
        target.symlink_to("/nonexistent-hpplug-target")
    settle(sandbox)
    monkeypatch.setenv("WANDB_RUN_ID", "data")
    refused("run", "--epochs", "1", "--wandb-mode", "disabled", "--output-dir", "runs")


def test_run_id_with_an_incomplete_checkpoint_is_refused(refused, sandbox, monkeypatch):
    folder = record_with(sandbox, "halfck")
    (folder / "checkpoint" / "run.json").unlink()
    settle(sandbox)
    monkeypatch.setenv("WANDB_RUN_ID", "halfck")
    assert "run.json) is missing" in refused("run", "--epochs", "1", "--wandb-mode", "disabled", "--output-dir", "runs").line


def test_run_id_in_use_by_a_live_process_is_refused(refused, sandbox, monkeypatch):
    folder = record_with(sandbox, "live1", checkpoint=False)
    settle(sandbox)
    holder = os.open(folder, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # what a running hpplug holds on its record
    try:
        monkeypatch.setenv("WANDB_RUN_ID", "live1")
        line = refused("run", "--epochs", "1", "--wandb-mode", "disabled", "--output-dir", "runs").line
        assert "another process" in line
    finally:
        os.close(holder)


@pytest.mark.slow
def test_preempted_trial_rerun_before_its_first_checkpoint_starts_clean(tmp_path, baseline):
    """Killed at update 5 (first checkpoint at 10), re-run with the same WANDB_RUN_ID: the
    rows are the uninterrupted run's, once each; the first attempt is kept in attempts/1."""
    env = {"WANDB_RUN_ID": "trial5"}
    killed = driver(*COMMON, "--output-dir", str(tmp_path), env={**env, "HPPLUG_TEST_KILL_AT": "5"})
    assert killed.returncode == -signal.SIGKILL
    first = rows(tmp_path / "trial5")
    rerun = driver(*COMMON, "--output-dir", str(tmp_path), env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_run(tmp_path / "trial5", baseline)
    kept = tmp_path / "trial5" / "attempts" / "1"
    assert rows(kept) == first and [r["step"] for r in first] == [4]
    assert (kept / "config.json").is_file()


# --- 3/4. atomic writes, torn lines, a full disk --------------------------------------------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("baseline")
    proc = driver(*COMMON, "--output-dir", str(out), env={"WANDB_RUN_ID": "base1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "base1"


@pytest.mark.slow
def test_full_disk_while_logging_then_resume_is_exact(tmp_path, baseline):
    """The disk fills at update 12 (checkpoint at 10): one line, a torn metrics line left;
    once space is free, --resume ends exactly like the uninterrupted run, in W&B too."""
    argv = [*COMMON[:-2], "--wandb-mode", "offline", "--output-dir", str(tmp_path)]
    full = driver(*argv, env={"WANDB_RUN_ID": "full12", "HPPLUG_TEST_ENOSPC_DIR": str(tmp_path),
                              "HPPLUG_TEST_ENOSPC_AT_UPDATE": "12"})
    folder = tmp_path / "full12"
    line = one_error(full)
    assert f"{folder / 'metrics.jsonl'}" in line and "No space left" in line
    assert f"hpplug run --resume {folder}" in line
    assert not (folder / "metrics.jsonl").read_bytes().endswith(b"\n"), "the injected torn line"
    assert not (folder / "summary.json").exists() and not list(folder.glob(".*.tmp"))
    resumed = driver("run", "--resume", str(folder))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(folder, baseline)
    runs = [read_run(f) for f in find_run_files(tmp_path / "wandb")]
    steps = sorted(r["_step"] for run in runs for r in run.history)
    # rows logged at one step (the last epoch's and the test's) are one row of W&B's history
    assert sorted({r["step"] for r in rows(baseline)}) == steps, "W&B has every step once"


@pytest.mark.slow
def test_full_disk_at_the_summary_then_resume(tmp_path, baseline):
    full = driver(*COMMON, "--output-dir", str(tmp_path),
                  env={"WANDB_RUN_ID": "sum1", "HPPLUG_TEST_ENOSPC_DIR": str(tmp_path),
                       "HPPLUG_TEST_ENOSPC_NAME": "summary.json"})
    folder = tmp_path / "sum1"
    assert str(folder / "summary.json") in one_error(full)
    assert not (folder / "summary.json").exists() and not list(folder.glob(".*.tmp"))
    resumed = driver("run", "--resume", str(folder))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(folder, baseline)


def test_full_disk_at_the_config_leaves_nothing_half_written(tmp_path):
    """The very first write fails: nothing half-written is left, and no run to resume."""
    full = driver(*COMMON, "--output-dir", str(tmp_path),
                  env={"WANDB_RUN_ID": "cfg1", "HPPLUG_TEST_ENOSPC_DIR": str(tmp_path)})
    line = one_error(full)
    assert str(tmp_path / "cfg1" / "config.json") in line and "start the run again" in line
    assert list((tmp_path / "cfg1").iterdir()) == []
    assert record.classify(tmp_path / "cfg1") is None, "the same run id starts afresh"


def test_a_failed_json_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    record.write_json(path, {"status": "interrupted", "updates": 30})
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        record.write_json(path, {"status": "failed"})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_torn_last_line_is_left_out_and_middle_damage_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    found, length = record.read_jsonl(path, "fix")
    assert [r["step"] for r in found] == [1, 2] and length == len(b'{"step": 1}\n{"step": 2}\n')
    path.write_bytes(b'{"step": 1}\n{"step"\n{"step": 3}\n')
    with pytest.raises(HpplugError, match=r"metrics.jsonl is damaged \(line 2"):
        record.read_jsonl(path, "fix")


# --- 3/5. resumes in-process: torn files, failures before and during training ---------------


class Crash(Exception):
    """A bug that ends a run as failed."""


class Switch(Plugin):
    """Crashes at update ``crash_at``, or before training when ``fail_setup`` is set."""

    crash_at = -1
    fail_setup = False

    @hookimpl
    def hpplug_adjust_config(self, config):
        if Switch.fail_setup:
            raise RuntimeError("set-up failed")

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        if progress.update == Switch.crash_at:
            raise Crash(f"crash at update {progress.update}")


@pytest.fixture
def cut_run(hpplug_register, hpplug_train, tmp_path):
    """An in-process baseline and the same run cut at update 35 (checkpoint at 30)."""
    hpplug_register("switch", Switch)
    options = dict(epochs=2, params={"mlp": {"hidden": 32}}, log_every=4, checkpoint_every="10", plugins=["switch"])
    Switch.crash_at, Switch.fail_setup = -1, False
    base = Path(hpplug_train(output_dir=str(tmp_path / "a"), **options).record_dir)
    Switch.crash_at = 35
    with pytest.raises(PluginError, match="crash at update"):
        hpplug_train(output_dir=str(tmp_path / "b"), **options)
    Switch.crash_at = -1
    (cut,) = (tmp_path / "b").iterdir()
    yield base, cut
    Switch.crash_at, Switch.fail_setup = -1, False


def test_resume_after_a_torn_line_and_an_empty_summary(cut_run, hpplug_cli):
    base, cut = cut_run
    with open(cut / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 36, "train/lo')
    (cut / "summary.json").write_bytes(b"")
    code, out, err = hpplug_cli("run", "--resume", str(cut))
    assert code == 0 and "Traceback" not in err, err
    assert f"{cut / 'summary.json'} is empty" in err
    assert_same_run(cut, base)  # rows() parses every line: the torn one is gone


def test_resume_failing_before_training_leaves_the_record(cut_run):
    from hpplug import discovery, engine
    from hpplug.run_args import resumed_config

    _, cut = cut_run
    with open(cut / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 36, "train/lo')  # a torn line, cut off only when training appends
    before = snapshot(cut)
    config, entries = resumed_config(discovery.discover(), cut)
    Switch.fail_setup = True
    with pytest.raises(PluginError, match="set-up failed"):
        engine.run(config, entries, resume_dir=cut, show_progress=False)
    assert snapshot(cut) == before


def test_resume_failing_during_training_keeps_earlier_metrics(cut_run):
    from hpplug import discovery, engine
    from hpplug.run_args import resumed_config

    _, cut = cut_run
    earlier = rows(cut)
    config, entries = resumed_config(discovery.discover(), cut)
    Switch.crash_at = 41
    with pytest.raises(PluginError, match="crash at update"):
        engine.run(config, entries, resume_dir=cut, show_progress=False)
    now = rows(cut)
    assert now[:len(earlier)] == earlier and now[-1]["step"] == 40
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["updates"] == 41
