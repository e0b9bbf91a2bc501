"""Two real CPU processes (gloo) under torchrun and under Accelerate's launcher.

With the per-process batch halved, a two-process run must train on exactly the samples of
the one-process run at every update, with the same LRs, one W&B run and one record; and so
must every installed plugin, as far as its draws allow.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hpplug.wandb_file import find_run_files, read_run

from .driver import cross_cutting

DRIVER = str(Path(__file__).with_name("driver.py"))
ARGS = ["run", "--plugin", "recorder", "--plugin", "cosine", "--plugin", "weight-decay", "--epochs", "2",
        "--log-every", "1", "--checkpoint-every", "1epoch", "--wandb-mode", "offline"]
N_TRAIN, N_VAL, N_TEST = 1293, 144, 360  # the digits split, 10% of its 1437 training images held out


def train_positions() -> list[int]:
    """The digits training images left after the fixed, seeded validation hold-out."""
    from hpplug.feed import VAL_SPLIT_SEED

    held_out = set(torch.randperm(N_TRAIN + N_VAL, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))[:N_VAL].tolist())
    return [i for i in range(N_TRAIN + N_VAL) if i not in held_out]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(prefix: list[str], out: Path, batch_size: int, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HPPLUG_TEST_RECORD": str(out / "record"), **(extra_env or {})}
    (out / "record").mkdir(parents=True)
    return subprocess.run([*prefix, *ARGS, "--batch-size", str(batch_size), "--output-dir", str(out / "runs")],
                          capture_output=True, text=True, env=env, timeout=300)


def updates(out: Path) -> dict[int, list[int]]:
    """The global sample indices of every update, all ranks together."""
    merged: dict[int, list[int]] = {}
    for path in sorted((out / "record").glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            merged.setdefault(row["update"], []).extend(row["indices"])
    return merged


def record_of(out: Path) -> Path:
    (record,) = [p for p in (out / "runs").iterdir() if p.name != "wandb"]
    return record


def lrs(record: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (record / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if "lr" in r and "val/accuracy" not in r}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    proc = launch([sys.executable, DRIVER], out, batch_size=64)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def check_two_ranks_match_one(out: Path, single: Path) -> None:
    record = record_of(out)  # exactly one local record
    (wandb_file,) = find_run_files(out / "runs" / "wandb")  # exactly one W&B run
    run = read_run(wandb_file)
    assert run.run_id == record.name and run.config["num_processes"] == 2
    assert run.config["global_batch_size"] == 64
    two, one = updates(out), updates(single)
    assert len(list((out / "record").glob("rank*.jsonl"))) == 2
    assert two.keys() == one.keys()
    for update in one:  # every update trains on the same global samples
        assert sorted(two[update]) == sorted(one[update])
    per_epoch = 21  # ceil(1293 / 64)
    for epoch in range(2):
        seen = [i for u in range(epoch * per_epoch, (epoch + 1) * per_epoch) for i in two[u]]
        assert sorted(seen) == train_positions(), "each training sample once per epoch across ranks"
    assert lrs(record) == pytest.approx(lrs(record_of(single)), rel=1e-12)
    rows = [json.loads(l) for l in (record / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/samples"] for r in rows if "val/samples" in r] == [N_VAL, N_VAL], "validation counted once"
    assert [r["test/samples"] for r in rows if "test/samples" in r] == [N_TEST], "the test set once, at the end"
    a = load_file(record / "checkpoint" / "model.safetensors")
    b = load_file(record_of(single) / "checkpoint" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), "same gradients: same weights"


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one(single, tmp_path):
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--master_port", str(free_port()), DRIVER]
    proc = launch(prefix, tmp_path, batch_size=32, extra_env={"ACCELERATE_USE_CPU": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" finished: val/accuracy") == 1, "one process reports"
    check_two_ranks_match_one(tmp_path, single)


@pytest.mark.slow
def test_accelerate_launch_two_processes_train_like_one(single, tmp_path):
    prefix = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), DRIVER]
    proc = launch(prefix, tmp_path, batch_size=32, extra_env={"ACCELERATE_USE_CPU": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_two_ranks_match_one(tmp_path, single)


@pytest.mark.slow
def test_processes_that_each_think_they_are_rank_0_are_refused(tmp_path):
    """``accelerate launch --multi_gpu`` without GPUs starts independent rank-0 runs."""
    if torch.cuda.is_available():
        pytest.skip("with GPUs this launch is right")
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(free_port()), "-m", "hpplug", "run",
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "each trains alone as rank 0" in proc.stderr and "ACCELERATE_USE_CPU=1" in proc.stderr
    assert not any(tmp_path.iterdir()), "no run was started"


# Plugins whose random draws depend on the process (each draws for its own half of the batch,
# with its own generator): two processes cannot train bit for bit like one. A plugin missing
# here whose draws do depend on the process fails the weight comparison below.
PER_PROCESS_DRAWS = {"crop", "flip", "dropout", "mixup", "cutmix", "cutout"}
EVERY = ["--epochs", "1", "--log-every", "5", "--checkpoint-every", "1epoch", "--wandb-mode", "disabled"]


def every(prefix: list[str], out: Path, names: list[str], batch_size: int) -> subprocess.Popen:
    """One launch that trains every plugin in ``names``, one run after the other (driver.every)."""
    return subprocess.Popen([*prefix, "every", str(out), *names, "--", *EVERY, "--batch-size", str(batch_size)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})


def finished(proc: subprocess.Popen, out: Path, ranks: int) -> dict[str, list[int]]:
    """Each plugin's exit code on every rank, once the launch is over."""
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    exits = [json.loads((out / f"exits.{rank}.json").read_text()) for rank in range(ranks)]
    return {name: [e[name] for e in exits] for name in exits[0]}


def outcome(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The one record a run left in ``folder``: its summary and final weights."""
    (record,) = folder.iterdir()
    return json.loads((record / "summary.json").read_text()), load_file(record / "checkpoint" / "model.safetensors")


@pytest.mark.slow
def test_two_processes_train_like_one_for_every_plugin(tmp_path):
    """Cross-cutting: each plugin, 1 epoch under torchrun on 2 CPU processes (batch 32 each)
    against 1 process (batch 64); all runs of each launch in one pair of processes."""
    names = cross_cutting()
    one, two = tmp_path / "one", tmp_path / "two"
    launches = [every([sys.executable, DRIVER], one, names, 64),
                every([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                       "--master_port", str(free_port()), DRIVER], two, names, 32)]
    exits_one, exits_two = finished(launches[0], one, 1), finished(launches[1], two, 2)
    problems = []
    for name in names:
        if exits_one[name] != [0] or exits_two[name] != [0, 0]:
            problems.append(f"{name}: exit codes {exits_one[name]} (1 process), {exits_two[name]} (2)")
            continue
        (summary, weights), (summary1, weights1) = outcome(two / name), outcome(one / name)
        numbers = {k: v for k, v in summary.items() if isinstance(v, float)}
        same = {k: (summary[k], summary1.get(k)) for k in ("status", "updates", "epochs_done")}
        if any(a != b for a, b in same.values()) or summary["updates"] != 21:
            problems.append(f"{name}: (2 processes, 1 process) {same}")
        if not all(math.isfinite(v) for v in numbers.values()) or "test/accuracy" not in numbers:
            problems.append(f"{name}: metrics {numbers}")
        if name in PER_PROCESS_DRAWS:
            continue
        far = [k for k in weights1 if not torch.allclose(weights[k], weights1[k], atol=1e-5)]
        if far or summary["val/loss"] != pytest.approx(summary1["val/loss"], rel=1e-5):
            problems.append(f"{name}: the weights {far} or val/loss {summary['val/loss']} differ from 1 process's")
    assert not problems, "\n".join(problems)
