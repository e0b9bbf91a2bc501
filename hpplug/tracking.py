"""Where a run's results go: W&B through Accelerate's tracker, and a local run record.

The local record (``<output-dir>/<run-id>/config.json``, ``metrics.jsonl``,
``summary.json``) is written line by line as the run goes, so nothing is lost when a
run fails, and it needs no W&B account to read. Only the main process writes. How each
file is written and read back (atomically, torn lines, damage) is in ``hpplug.record``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import netrc
import os
import secrets
import string
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from accelerate import Accelerator

from hpplug import record
from hpplug.checkpoint import CHECKPOINT
from hpplug.errors import HpplugError


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
    """Logs to W&B (when enabled) and to the local record, on the main process only.

    The record is the run's own while it runs (a lock on its folder): a second process
    with the same run id is refused instead of interleaving its rows. A write that fails
    (a full disk) ends the run with one line saying what to do; a resumed run that fails
    before its checkpoint is loaded leaves the record as it was.
    """

    def __init__(self, accelerator: Accelerator, mode: str, run_id: str, output_dir: str | Path) -> None:
        self.accelerator = accelerator
        self.mode = mode
        self.run_id = record.check_run_id(run_id, "run id")
        self.active = accelerator.is_main_process
        self.record_dir = Path(output_dir) / run_id
        self.wandb_run: Any = None
        self.resuming = False
        self._metrics: BinaryIO | None = None
        self._good_length = 0  # bytes of complete lines in metrics.jsonl when resuming
        self._lock: int | None = None
        self._logged: set[tuple[int, tuple[str, ...]]] = set()

    def start(self, project: str, config: dict[str, Any], resuming: bool = False) -> None:
        """Open the record and the W&B run; a resumed run keeps both and their run id.

        A new run refuses a record that finished or can be resumed, and moves the files of
        an attempt that ended before its first checkpoint into ``attempts/<n>/``.
        """
        if not self.active:
            return
        self.resuming = resuming
        metrics = self.record_dir / record.METRICS
        earlier: list[dict[str, Any]] = []
        state = record.classify(self.record_dir)  # read-only: refusals and damage before any write
        if resuming:
            earlier, self._good_length = record.read_jsonl(metrics, "remove or repair that line, then resume again")
        else:
            record.check_new(self.record_dir, state)
        self._guard(lambda: self.record_dir.mkdir(parents=True, exist_ok=True), self.record_dir)
        self._lock = _lock(self.record_dir)
        try:
            if not resuming:
                state = record.classify(self.record_dir)  # again, now that no other process can change it
                record.check_new(self.record_dir, state)
                if state == "restartable":
                    self._guard(lambda: record.keep_aside(self.record_dir), self.record_dir / record.ATTEMPTS)
                self.write_config(config)
                self._guard(metrics.touch, metrics)
            # What was logged before an interruption is kept and not logged again.
            self._logged = {(row["step"], _keys(row)) for row in earlier}
            if self.mode != "disabled":
                os.environ.setdefault("WANDB_SILENT", "true")
                # W&B's debug log on a full disk would print a traceback per log call; its
                # run file is written by wandb-core, which only logs the error. The record's
                # own writes, on the same disk, report it; a resume replays what W&B lost.
                logging.raiseExceptions = False
                init = {"mode": self.mode, "id": self.run_id, "dir": str(self.record_dir.parent),
                        "resume": "allow"}  # the group comes from WANDB_RUN_GROUP when set
                self._guard(lambda: self.accelerator.init_trackers(
                    project, config=_jsonable(config), init_kwargs={"wandb": init}), self.record_dir.parent / "wandb")
                self.wandb_run = self.accelerator.get_tracker("wandb", unwrap=True)
                self._replay(earlier)
        except BaseException:
            self._unlock()
            raise

    def _guard(self, write: Callable[[], Any], path: Path) -> None:
        """Run a write of the record; a failure (a full disk) becomes one line saying what to do."""
        try:
            write()
        except OSError as exc:
            if (self.record_dir / CHECKPOINT).is_dir():
                then = f"continue with: hpplug run --resume {self.record_dir}"
            else:
                then = "start the run again (there is no checkpoint to resume from yet)"
            raise HpplugError(f"cannot write {path}: {exc.strerror or exc}; free space or fix the folder, "
                              f"then {then}") from None

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
            path = self.record_dir / record.CONFIG
            self._guard(lambda: record.write_json(path, _jsonable(config)), path)

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
        line = json.dumps({"step": step, "time": round(time.time(), 3), **_jsonable(metrics)}) + "\n"
        self._guard(lambda: self._append(line.encode()), self.record_dir / record.METRICS)
        if self.wandb_run is not None:
            self.accelerator.log(metrics, step=step)

    def _append(self, data: bytes) -> None:
        """One line at the end of metrics.jsonl; opened on the first line, so that a resumed run
        that fails before it logs anything leaves the file as it was (torn tail included)."""
        if self._metrics is None:
            path = self.record_dir / record.METRICS
            if self.resuming:
                record.cut_torn_tail(path, self._good_length)
            self._metrics = open(path, "ab", buffering=0)
        view = memoryview(data)
        while view:
            view = view[self._metrics.write(view):]

    def finish(self, summary: dict[str, Any], status: str) -> str | None:
        """Write the summary, close W&B; returns the `wandb sync` hint for offline runs.

        A resumed run that failed before its checkpoint was loaded (no updates to report)
        keeps the summary it had. When the summary cannot be written, a failed run's own
        error is the one reported; any other run reports this one.
        """
        if not self.active:
            return None
        summary = {"status": status, **_jsonable(summary)}
        keep = self.resuming and status == "failed" and not summary.get("updates")
        errors: list[HpplugError] = []

        def attempt(write: Callable[[], Any], path: Path) -> None:
            try:
                self._guard(write, path)
            except HpplugError as exc:
                errors.append(exc)

        hint = None
        try:
            if not keep:
                path = self.record_dir / record.SUMMARY
                attempt(lambda: record.write_json(path, summary), path)
            if self._metrics is not None:
                with contextlib.suppress(OSError):
                    self._metrics.close()
            if self.wandb_run is not None:
                attempt(lambda: self._finish_wandb(summary, status, keep), self.record_dir.parent / "wandb")
                if self.mode == "offline":
                    hint = f"wandb sync {Path(self.wandb_run.dir).parent}"
        finally:
            self._unlock()
        if errors and status != "failed":
            raise errors[0]
        return hint

    def _finish_wandb(self, summary: dict[str, Any], status: str, keep: bool) -> None:
        self.wandb_run.log({}, commit=True)  # flush the last row first: its values would win
        if not keep:
            self.wandb_run.summary.update(summary)
        if status == "interrupted":
            self.wandb_run.mark_preempting()
        self.wandb_run.finish(exit_code=0 if status in ("finished", "stopped") else 1)

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing releases the lock
            self._lock = None


def _lock(folder: Path) -> int | None:
    """An exclusive lock on the record folder for the life of the run (released by the
    system when the process dies, even by SIGKILL); None where locks are not available."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise HpplugError(f"run {folder.name} is running in another process (its record {folder} is locked); "
                          "use another run id, or wait for it to end") from None
    except OSError:  # a file system without locks: run unlocked
        pass
    return fd
