"""Checkpoints, resume and stop requests: a run that is killed loses at most the updates
since its last checkpoint, and a resumed run ends with exactly the weights and metrics of
an uninterrupted one.

A checkpoint is ``<record dir>/checkpoint/``: Accelerate's ``save_state`` (model,
optimizer, every process's RNG states, each plugin's ``state_dict`` and the loop's
counters) plus ``run.json`` with the configuration the run started from. It is written
to a temporary folder and renamed, so a kill during a save leaves the previous one.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpplug import record
from hpplug.errors import HpplugError

CHECKPOINT = "checkpoint"
_EVERY = re.compile(r"^\s*(\d+)\s*(u|updates?|e|epochs?)?\s*$")


@dataclass(frozen=True)
class Every:
    """How often to checkpoint: every ``n`` updates or every ``n`` epochs."""

    n: int
    unit: str  # "updates" or "epochs"

    @classmethod
    def parse(cls, spec: str | None) -> Every | None:
        if spec in (None, "", "None", "0"):
            return None
        match = _EVERY.match(str(spec))
        if not match or int(match.group(1)) < 1:
            raise HpplugError(f"--checkpoint-every {spec!r}: expected a count of updates or epochs, "
                              "such as 200, 200updates or 1epoch")
        unit = "epochs" if (match.group(2) or "u").startswith("e") else "updates"
        return cls(int(match.group(1)), unit)


def save(accelerator: Any, record_dir: Path, run_config: dict[str, Any]) -> Path:
    """Save the state of every process into ``record_dir/checkpoint`` atomically."""
    final = record_dir / CHECKPOINT
    staging = record_dir / (CHECKPOINT + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / "run.json").write_text(json.dumps({"config": run_config}, indent=2) + "\n")
        old = record_dir / (CHECKPOINT + ".old")
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def saved_config(record_dir: Path) -> dict[str, Any]:
    path = record_dir / CHECKPOINT / "run.json"
    if not path.is_file():
        raise HpplugError(f"{record_dir} has no checkpoint to resume from ({path} is missing); "
                          "runs write one with --checkpoint-every, or when interrupted")
    return json.loads(path.read_text())["config"]


def status(record_dir: Path) -> str | None:
    """The status in a run's summary.json; None while it runs or after a kill (no summary,
    or an empty one that a write cut short left: the checkpoint then decides)."""
    summary = record.read_json(record_dir / record.SUMMARY, "restore or move it aside, then try again",
                               empty_ok=True)
    return None if summary is None else summary.get("status")


def find_resumable(output_dir: Path) -> Path:
    """``--resume auto``: the newest run under ``output_dir`` with a checkpoint that did not
    finish. A damaged candidate is reported, not skipped: skipping would pick an older run."""
    folders = [p for p in output_dir.iterdir() if record.is_run_id(p.name)] if output_dir.is_dir() else []
    candidates = [p for p in folders if (p / CHECKPOINT).exists() and record.classify(p) == "resumable"]
    if not candidates:
        raise HpplugError(f"no unfinished run with a checkpoint in {output_dir}; "
                          "pass --resume DIR with a run's record folder")
    return max(candidates, key=lambda p: (p / CHECKPOINT).stat().st_mtime)


class StopRequests:
    """Turns SIGINT/SIGTERM (interrupt: checkpoint, resumable) and SIGUSR1 (stop early, as
    a sweep's early termination asks) into a flag the loop reads between updates."""

    SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "interrupted",
               getattr(signal, "SIGUSR1", None): "stopped"}

    def __init__(self) -> None:
        self.reason: str | None = None
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.reason, self.signum = self.SIGNALS[signum], signum

    def __enter__(self) -> StopRequests:
        for signum in self.SIGNALS:
            if signum is not None:
                try:
                    self._previous[signum] = signal.signal(signum, self._handle)
                except ValueError:  # not the main thread: leave signals alone
                    pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
