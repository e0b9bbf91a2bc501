"""Checkpoint and resume: a run cut short and resumed ends exactly like one never stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hpplug import Plugin, discovery, hookimpl
from hpplug.wandb_file import find_run_files, read_run

from .driver import Crash, CrashAt, Killer, cross_cutting, forked, resume
from .hostile.conftest import assert_same_run, rows

DRIVER = str(Path(__file__).with_name("driver.py"))


def hpplug(*argv: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, DRIVER, *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


COMMON = ["run", "--plugin", "killer", "--plugin", "cosine", "--plugin", "dropout", "--plugin", "crop",
          "--epochs", "2", "--log-every", "4", "--checkpoint-every", "10", "--wandb-mode", "offline"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    base_dir, cut_dir = tmp_path / "baseline", tmp_path / "cut"
    hpplug(*COMMON, "--output-dir", str(base_dir))
    killed = hpplug(*COMMON, "--output-dir", str(cut_dir), env={"HPPLUG_TEST_KILL_AT": "35"}, check=False)
    assert killed.returncode == -signal.SIGKILL
    (record,) = [p for p in cut_dir.iterdir() if p.name != "wandb"]
    assert not (record / "summary.json").exists()
    loop_state = json.loads((record / "checkpoint" / "loop.json").read_text())
    assert loop_state["update"] == 30, "the last checkpoint before the kill"
    resumed = hpplug("run", "--resume", "auto", "--output-dir", str(cut_dir))
    assert f"run {record.name} finished" in resumed.stdout
    (baseline,) = [p for p in base_dir.iterdir() if p.name != "wandb"]
    assert_same_run(record, baseline)
    # W&B: the resumed run keeps its id, and across both files every step is there once
    # (the killed process's W&B service may not have flushed its file: hpplug replays
    # from the local record what W&B lost).
    files = find_run_files(cut_dir / "wandb")
    assert len(files) == 2 and {f.name for f in files} == {f"run-{record.name}.wandb"}
    runs = [read_run(f) for f in files]
    steps = [(r["_step"], tuple(sorted(k for k in r if not k.startswith("_")))) for run in runs for r in run.history]
    assert len(steps) == len(set(steps))
    base_steps = [r["_step"] for r in read_run(find_run_files(base_dir / "wandb")[0]).history]
    assert sorted(s for s, _ in steps) == sorted(base_steps)


@pytest.mark.slow
def test_sigterm_checkpoints_and_says_how_to_resume(tmp_path):
    proc = subprocess.Popen([sys.executable, DRIVER, "run", "--epochs", "400", "--wandb-mode", "offline",
                             "--output-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = None
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics and metrics.exists() and metrics.stat().st_size):
        time.sleep(0.2)
        found = [p for p in tmp_path.glob("*/metrics.jsonl")]
        metrics = found[0] if found else None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    record = metrics.parent
    assert f"Resume with: hpplug run --resume {record}" in err
    summary = json.loads((record / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["updates"] < 400 * 21
    state = json.loads((record / "checkpoint" / "run.json").read_text())
    assert state["config"]["epochs"] == 400
    (run,) = [read_run(f) for f in find_run_files(tmp_path / "wandb")]
    assert run.exit_code != 0 and run.summary["status"] == "interrupted"


@pytest.fixture
def one_thread():
    """Every run of the test on one thread, like the forked child (see driver.forked), so
    that the killed run and the straight one compute alike bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kill_and_resume(hpplug_train, tmp_path: Path, options: dict, reorder: bool = False) -> tuple[Path, Path]:
    """Train ``options`` (which name the ``killer`` plugin) straight through; again in a forked
    copy of this process that SIGKILLs itself after update 35 (the checkpoint of update 30 on
    disk); then resume that record here, as ``hpplug run --resume`` does (``reorder``: its
    plugins named in reverse order). Returns the two record folders: the straight one and
    the resumed one."""
    baseline = Path(hpplug_train(output_dir=str(tmp_path / "a"), **options).record_dir)

    def train_until_killed():
        os.environ["HPPLUG_TEST_KILL_AT"] = "35"  # the child's environment only
        hpplug_train(output_dir=str(tmp_path / "b"), **options)

    ended = forked(train_until_killed, tmp_path / "killed")
    assert ended == -signal.SIGKILL, (tmp_path / "killed.err").read_text()[-3000:]
    (cut,) = (tmp_path / "b").iterdir()
    assert not (cut / "summary.json").exists(), "the killed run never closed its record"
    assert json.loads((cut / "checkpoint" / "loop.json").read_text())["update"] == 30
    resume(cut, reorder)
    return baseline, cut


def crash_and_resume(hpplug_train, tmp_path: Path, options: dict) -> tuple[Path, Path]:
    """In-process, for the plugin packages' own tests (``options`` name ``crash-at``, which the
    test registers as :class:`CrashAt`): straight through, and again cut by a :class:`Crash`
    after update 35 (the checkpoint of update 30 on disk) and resumed. The two records."""
    CrashAt.at = -1
    baseline = Path(hpplug_train(output_dir=str(tmp_path / "a"), **options).record_dir)
    CrashAt.at = 35
    try:
        with pytest.raises(Crash):
            hpplug_train(output_dir=str(tmp_path / "b"), **options)
    finally:
        CrashAt.at = -1
    (cut,) = (tmp_path / "b").iterdir()
    resume(cut)
    return baseline, cut


def weights(record: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(record / "checkpoint" / "model.safetensors")


@pytest.mark.parametrize("plugin", cross_cutting())
def test_resume_is_exact_for_every_installed_plugin(plugin, hpplug_register, hpplug_train, tmp_path, one_thread):
    """Cross-cutting: each plugin trained 2 epochs straight vs SIGKILLed mid-epoch (update 35
    of 42) and resumed."""
    hpplug_register("killer", Killer)
    kind = discovery.discover()[plugin].kind_name
    chosen = {kind: plugin} if kind in ("model", "dataset") else {}
    options = dict(epochs=2, log_every=4, checkpoint_every="10",
                   plugins=["killer"] + ([] if chosen else [plugin]), **chosen)
    baseline, cut = kill_and_resume(hpplug_train, tmp_path, options)
    assert_same_run(cut, baseline)


class Keeper(Plugin):
    """Keeps state of its own (a count and a tensor) and logs it at each epoch's end."""

    key, step = "", 0

    def __init__(self, **values):
        super().__init__(**values)
        self.count, self.total = 0, torch.zeros(3)

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        self.count += self.step
        self.total += self.step * progress.update

    @hookimpl
    def hpplug_epoch_end(self, metrics, progress):
        return {f"{self.key}/count": self.count, f"{self.key}/total": float(self.total.sum())}

    def state_dict(self):
        return {"count": self.count, "total": self.total}

    def load_state_dict(self, state):
        self.count, self.total = state["count"], state["total"]


class KeeperA(Keeper):
    key, step = "a", 1


class KeeperB(Keeper):
    key, step = "b", 7


def test_each_plugin_gets_its_own_state_back_when_named_in_another_order(hpplug_register, hpplug_train, tmp_path,
                                                                        one_thread):
    """A plugin's state is saved under its name, not its position among the plugins."""
    for name, cls in (("killer", Killer), ("keeper-a", KeeperA), ("keeper-b", KeeperB)):
        hpplug_register(name, cls)
    options = dict(epochs=2, log_every=4, checkpoint_every="10", params={"mlp": {"hidden": 16}},
                   plugins=["killer", "keeper-a", "keeper-b"])
    baseline, cut = kill_and_resume(hpplug_train, tmp_path, options, reorder=True)
    assert_same_run(cut, baseline)
    last = [row for row in rows(cut) if "a/count" in row][-1]  # the last epoch's row
    assert (last["a/count"], last["b/count"]) == (42, 7 * 42)


@pytest.mark.slow
def test_a_preempted_sweep_trial_rerun_with_its_run_id_resumes(tmp_path):
    """``wandb agent`` re-runs a preempted trial with the same argv and WANDB_RUN_ID."""
    argv = ["run", "--plugin", "killer", "--epochs", "1", "--log-every", "1", "--checkpoint-every", "10",
            "--wandb-mode", "disabled", "--output-dir", str(tmp_path)]
    killed = hpplug(*argv, env={"WANDB_RUN_ID": "trial123", "HPPLUG_TEST_KILL_AT": "15"}, check=False)
    assert killed.returncode == -signal.SIGKILL
    rerun = hpplug(*argv, env={"WANDB_RUN_ID": "trial123"})
    assert "run trial123 finished" in rerun.stdout
    steps = [row["step"] for row in rows(tmp_path / "trial123")]
    # every update logged once, the resumed ones included; then the epoch's row and the test's
    assert steps == list(range(1, 22)) + [21, 21], "every update logged once, the resumed ones included"
    assert json.loads((tmp_path / "trial123" / "summary.json").read_text())["updates"] == 21
