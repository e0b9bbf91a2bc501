"""What a trial did, read back from its run record (``metrics.jsonl``, ``summary.json``,
``config.json``) as untrusted data: damage is read around, never trusted."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpplug import record

if TYPE_CHECKING:
    from hpplug.sweep.state import Trial


def read_history(record_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``, read around damage (``record.read_jsonl``):
    a torn last line, a damaged line or one that is not a JSON object is skipped."""
    return record.read_jsonl(record_dir / record.METRICS, tolerant=True)[0]


def read_summary(record_dir: Path, since: float = 0.0) -> dict[str, Any]:
    """A run's ``summary.json`` if written at or after ``since`` (older ones are stale); {}
    when there is none, or it is empty, damaged or not a JSON object."""
    path = record_dir / record.SUMMARY
    try:
        if path.stat().st_mtime + 1.0 < since:
            return {}
    except OSError:
        return {}
    return record.read_json(path, tolerant=True) or {}


def metric_value(name: str, summary: dict[str, Any], history: list[dict[str, Any]]) -> float | None:
    """The trial's result: its summary value, else (stopped mid-epoch) the last one logged."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if number(summary.get(name)):
        return float(summary[name])
    logged = [row[name] for row in history if number(row.get(name))]
    return float(logged[-1]) if logged else None


def ended_status(summary: dict[str, Any], stop_requested: bool, exit_code: int | None, interrupted: bool) -> str:
    """How a trial ended: its summary's status; else stopped when it was asked to stop and
    exited as a stopped run does; else failed, or interrupted when the sweep ended it
    (it starts again on the next run)."""
    status = summary.get("status")
    if status in ("finished", "stopped", "interrupted"):
        return status
    if stop_requested and exit_code in (0, -getattr(signal, "SIGUSR1", 10)):
        return "stopped"
    return "interrupted" if interrupted else "failed"


def is_count(value: Any) -> bool:
    """A whole number read from a record (a JSON ``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def in_training(trial: Trial) -> bool:
    """Whether the trial's process is inside its training loop, where a stop request
    (SIGUSR1) stops it after the current update. Not before its first row of this attempt
    (it is still setting up, and would die of the signal's default action), nor once it
    logged its last epoch or its test results (too late: its training is over)."""
    record_dir = trial.record_dir
    since = (trial.launched or 0.0) - 1.0
    rows = [r for r in read_history(record_dir) if isinstance(r.get("time"), (int, float)) and r["time"] >= since]
    if not rows or any(key.startswith("test/") for row in rows for key in row):
        return False
    epochs = (record.read_json(record_dir / record.CONFIG, tolerant=True) or {}).get("epochs")
    done = [row["epoch"] for row in rows if is_count(row.get("epoch"))]
    return not (is_count(epochs) and done and max(done) >= epochs)
