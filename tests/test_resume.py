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
from safetensors.torch import load_file

from hpplug import Plugin, discovery, hookimpl
from hpplug.wandb_file import find_run_files, read_run

DRIVER = str(Path(__file__).with_name("driver.py"))
VOLATILE = {"time", "train/samples_per_s"}


def rows(record: Path) -> list[dict]:
    """The record's metrics without the wall-clock ones."""
    lines = (record / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k not in VOLATILE} for l in lines]


def weights(record: Path) -> dict[str, torch.Tensor]:
    return load_file(record / "checkpoint" / "model.safetensors")


def assert_same_run(resumed: Path, baseline: Path) -> None:
    assert rows(resumed) == rows(baseline)
    a, b = weights(resumed), weights(baseline)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["test/accuracy"] == json.loads((baseline / "summary.json").read_text())["test/accuracy"]


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


class Crash(BaseException):
    """Stands for the process dying: raised from inside the loop, caught by the test."""


class CrashAt(Plugin):
    at = -1

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        if progress.update == CrashAt.at:
            raise Crash()


def crash_and_resume(hpplug_train, tmp_path: Path, options: dict, reorder: bool = False) -> tuple[Path, Path]:
    """Train ``options`` straight through, and again crashed at update 35 (the checkpoint of
    update 30 on disk), then resumed in-process (``reorder``: its plugins named in reverse
    order). Returns the two record folders: the baseline and the resumed one."""
    from hpplug import engine
    from hpplug.cli import resumed_config

    CrashAt.at = -1
    baseline = Path(hpplug_train(output_dir=str(tmp_path / "a"), **options).record_dir)
    CrashAt.at = 35
    try:
        with pytest.raises(Crash):
            hpplug_train(output_dir=str(tmp_path / "b"), **options)
    finally:
        CrashAt.at = -1
    (cut,) = (tmp_path / "b").iterdir()
    config, entries = resumed_config(discovery.discover(), cut)
    if reorder:
        config.plugins.reverse()
        entries.reverse()
    engine.run(config, entries, resume_dir=cut, show_progress=False)
    return baseline, cut


CATALOG = {n: e for n, e in discovery.discover().items() if e.cls is not None and e.distribution != "<in-process>"}
# Data sets that need files, and the zoo models (minutes on this CPU), resume through the
# same engine path as digits and mlp/cnn; they are trained in tests/test_byo.py.
ELSEWHERE = {"mnist", "fashion-mnist", "cifar10", "imagefolder", "torchvision", "timm"}


@pytest.mark.parametrize("plugin", sorted(set(CATALOG) - ELSEWHERE))
def test_resume_is_exact_for_every_installed_plugin(plugin, hpplug_register, hpplug_train, tmp_path):
    """Cross-cutting: each plugin trained 2 epochs straight vs cut at update 35 and resumed."""
    hpplug_register("crash-at", CrashAt)
    kind = CATALOG[plugin].kind_name
    chosen = {kind: plugin} if kind in ("model", "dataset") else {}
    options = dict(epochs=2, log_every=4, checkpoint_every="10",
                   plugins=["crash-at"] + ([] if chosen else [plugin]), **chosen)
    baseline, cut = crash_and_resume(hpplug_train, tmp_path, options)
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


def test_each_plugin_gets_its_own_state_back_when_named_in_another_order(hpplug_register, hpplug_train, tmp_path):
    """A plugin's state is saved under its name, not its position among the plugins."""
    for name, cls in (("crash-at", CrashAt), ("keeper-a", KeeperA), ("keeper-b", KeeperB)):
        hpplug_register(name, cls)
    options = dict(epochs=2, log_every=4, checkpoint_every="10", params={"mlp": {"hidden": 16}},
                   plugins=["crash-at", "keeper-a", "keeper-b"])
    baseline, cut = crash_and_resume(hpplug_train, tmp_path, options, reorder=True)
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
