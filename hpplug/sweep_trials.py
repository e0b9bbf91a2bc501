"""A sweep's trials on disk and as processes: run records, metric values, signals.

A trial is a normal ``hpplug run``; what it did is read back from its run record
(``metrics.jsonl``, ``summary.json``). Trials run in their own process group, as under
``wandb agent``, so the sweep decides which signal reaches which process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def read_history(record: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (a half-written last line is skipped)."""
    path = record / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def read_summary(record: Path, since: float = 0.0) -> dict[str, Any]:
    """A run's ``summary.json``, if written at or after ``since`` (older ones are stale)."""
    path = record / "summary.json"
    try:
        if path.stat().st_mtime + 1.0 >= since:
            return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        pass
    return {}


def metric_value(name: str, summary: dict[str, Any], history: list[dict[str, Any]]) -> float | None:
    """The trial's result: its summary value, else (stopped mid-epoch) the last one logged."""
    if isinstance(summary.get(name), (int, float)):
        return float(summary[name])
    logged = [row[name] for row in history if isinstance(row.get(name), (int, float))]
    return float(logged[-1]) if logged else None


# --- trial processes -----------------------------------------------------------------------


def _is_trainer(argv: list[str]) -> bool:
    """``python [-u ...] -m hpplug ...`` or the ``hpplug`` script: a process that trains
    (not a launcher such as torchrun or accelerate, nor wandb-core)."""
    if not argv or not os.path.basename(argv[0]).startswith("python"):
        return bool(argv) and os.path.basename(argv[0]) == "hpplug"
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-m", "-c"):
        i += 2 if argv[i] in ("-X", "-W") else 1
    if i >= len(argv):
        return False
    if argv[i] == "-m":
        return argv[i + 1:i + 2] == ["hpplug"]
    return os.path.basename(argv[i]) == "hpplug"


def signal_trainers(pid: int, signum: int) -> int:
    """Send ``signum`` to every training process of a trial (all ranks under a launcher;
    the launcher itself would die of SIGUSR1). Returns how many were signalled."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    targets = []
    for proc in procs:
        try:
            if _is_trainer(proc.cmdline()):
                targets.append(proc)
        except psutil.Error:
            continue
    for proc in targets or [root]:
        try:
            proc.send_signal(signum)
        except psutil.Error:
            pass
    return len(targets or [root])


class Adopted:
    """A trial process started by an earlier ``hpplug sweep`` that is still alive."""

    def __init__(self, proc: Any) -> None:
        self.proc, self.pid, self.returncode = proc, proc.pid, None

    def poll(self) -> int | None:
        import psutil

        try:
            alive = self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        return None if alive else -1

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)


def adopt(pid: int | None, started: float | None) -> Adopted | None:
    """The still-running process of a trial, when ``pid`` is the very process we started."""
    import psutil

    if not pid or not started:
        return None
    try:
        proc = psutil.Process(pid)
        return Adopted(proc) if abs(proc.create_time() - started) < 0.01 else None
    except psutil.Error:
        return None


def new_group() -> dict[str, Any]:
    """Start trials in their own process group, as ``wandb agent`` does: a Ctrl-C reaches
    the runner, which forwards it, and SIGUSR1 reaches only the trial that must stop."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


