"""Where a run's results go: W&B through Accelerate's tracker, and a local run record.

The local record (``<output-dir>/<run-id>/config.json``, ``metrics.jsonl``,
``summary.json``) is written line by line as the run goes, so nothing is lost when a
run fails, and it needs no W&B account to read. Only the main process writes.
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import string
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator


def has_wandb_credentials() -> bool:
    """True when an API key is configured (environment or ~/.netrc), without network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(requested: str | None) -> str:
    """--wandb-mode, else WANDB_MODE, else online with credentials and offline without."""
    mode = requested or os.environ.get("WANDB_MODE") or ""
    if mode in ("online", "offline", "disabled"):
        return mode
    if mode == "dryrun":
        return "offline"
    return "online" if has_wandb_credentials() else "offline"


def new_run_id() -> str:
    """Eight lowercase letters and digits, the shape of a W&B run id."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _keys(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(set(row) - {"step", "time"}))


class Tracker:
    """Logs to W&B (when enabled) and to the local record, on the main process only."""

    def __init__(self, accelerator: Accelerator, mode: str, run_id: str, output_dir: str | Path) -> None:
        self.accelerator = accelerator
        self.mode = mode
        self.run_id = run_id
        self.active = accelerator.is_main_process
        self.record_dir = Path(output_dir) / run_id
        self.wandb_run: Any = None
        self._metrics = None
        self._logged: set[tuple[int, tuple[str, ...]]] = set()

    def start(self, project: str, config: dict[str, Any], resuming: bool = False) -> None:
        """Open the record and the W&B run; a resumed run keeps both and their run id."""
        if not self.active:
            return
        self.record_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.record_dir / "metrics.jsonl"
        earlier = [json.loads(line) for line in metrics.read_text().splitlines()] if resuming and metrics.exists() else []
        # What was logged before an interruption is kept and not logged again.
        self._logged = {(row["step"], _keys(row)) for row in earlier}
        if not resuming:
            self.write_config(config)
        self._metrics = open(metrics, "a", buffering=1)
        if self.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            init = {"mode": self.mode, "id": self.run_id, "dir": str(self.record_dir.parent),
                    "resume": "allow"}  # the group comes from WANDB_RUN_GROUP when set
            self.accelerator.init_trackers(project, config=_jsonable(config), init_kwargs={"wandb": init})
            self.wandb_run = self.accelerator.get_tracker("wandb", unwrap=True)
            self._replay(earlier)

    def _replay(self, earlier: list[dict[str, Any]]) -> None:
        """Send W&B the rows it lost when the process died (a killed process's W&B service
        may not have flushed them; an offline file can even be empty). What W&B already
        has is not sent again: online, the resumed run's step says; offline, its files."""
        if not earlier:
            return
        known = self.wandb_run.step
        if self.mode == "offline":
            from hpplug.wandb_file import find_run_files, read_run

            steps = [row["_step"] for path in find_run_files(self.record_dir.parent / "wandb")
                     if path.name == f"run-{self.run_id}.wandb" and path.parent.name != "latest-run"
                     for row in read_run(path).history]
            known = max(steps, default=-1) + 1
        for row in earlier:
            if row["step"] >= known:
                values = {k: v for k, v in row.items() if k not in ("step", "time")}
                self.accelerator.log(values, step=row["step"])

    def write_config(self, config: dict[str, Any]) -> None:
        """The record's config.json: rewritten once a sweep's values have been applied."""
        if self.active:
            (self.record_dir / "config.json").write_text(json.dumps(_jsonable(config), indent=2) + "\n")

    def wandb_config(self) -> dict[str, Any]:
        """What W&B says the config is: in a sweep, the sweep's values win over argv."""
        return dict(self.wandb_run.config) if self.wandb_run is not None else {}

    def update_config(self, values: dict[str, Any]) -> None:
        """Add values derived while building the run (the LR after a scaling rule)."""
        if self.wandb_run is not None:
            self.wandb_run.config.update(values, allow_val_change=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.active or (step, _keys(metrics)) in self._logged:
            return
        self._metrics.write(json.dumps({"step": step, "time": round(time.time(), 3), **_jsonable(metrics)}) + "\n")
        if self.wandb_run is not None:
            self.accelerator.log(metrics, step=step)

    def finish(self, summary: dict[str, Any], status: str) -> str | None:
        """Write the summary, close W&B; returns the `wandb sync` hint for offline runs."""
        if not self.active:
            return None
        summary = {"status": status, **_jsonable(summary)}
        (self.record_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self._metrics is not None:
            self._metrics.close()
        hint = None
        if self.wandb_run is not None:
            self.wandb_run.log({}, commit=True)  # flush the last row first: its values would win
            self.wandb_run.summary.update(summary)
            if self.mode == "offline":
                hint = f"wandb sync {Path(self.wandb_run.dir).parent}"
            if status == "interrupted":
                self.wandb_run.mark_preempting()
            self.wandb_run.finish(exit_code=0 if status in ("finished", "stopped") else 1)
        return hint
