"""Where a run's results go: a local run record, and W&B (:mod:`hpplug.wandb_run`).

The local record (``<output-dir>/<run-id>/config.json``, ``metrics.jsonl``,
``summary.json``) is written line by line as the run goes, so nothing is lost when a
run fails, and it needs no W&B account to read. Only the main process writes. How each
file is written and read back (atomically, torn lines, damage) is in ``hpplug.record``.
"""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

import click

from hpplug import record
from hpplug.errors import HpplugError
from hpplug.wandb_run import WandbRun, jsonable, offline_folders

if TYPE_CHECKING:
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


def _keys(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(set(row) - {"step", "time"}))


def opening_line(run_id: str, config: Any, mode: str, resuming: bool) -> str:
    """The run's first line of its own: what trains on what, how, and where it is tracked."""
    plugins = ", ".join(config.plugins) or "none"
    processes = f" x {config.num_processes} processes" if config.num_processes > 1 else ""
    accum = f" x {config.grad_accum} micro-batches" if config.grad_accum > 1 else ""
    return (f"{'resuming run' if resuming else 'run'} {run_id}: {config.model} on {config.dataset}, plugins {plugins}; "
            f"{config.optimizer} lr {config.lr:g}, batch {config.batch_size}{processes}{accum}, "
            f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}; W&B {mode}")


def closing_line(run_id: str, status: str, summary: dict[str, Any], record_dir: Path, kept: bool) -> str:
    """The run's last line: how it ended, its results, where its record is."""
    if kept:
        return f"run {run_id} failed before its checkpoint was loaded; its record is as it was: {record_dir}"
    shown = [f"{key} {summary[key]:.4f}" for key in ("val/accuracy", "test/accuracy")
             if isinstance(summary.get(key), float)]
    if status == "finished" and "test/accuracy" not in summary:
        shown.append("no test split: the validation result is the run's result")
    if status == "failed" and not summary.get("updates"):
        return f"run {run_id} failed before training (its summary.json holds the error); record in {record_dir}"
    return (f"run {run_id} {status}: {', '.join(shown + [''])}"
            f"{summary.get('train/samples_per_s', 0):,.0f} samples/s; record in {record_dir}")


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
        self.wandb_dir = Path(output_dir) / "wandb"  # W&B's own folder, beside the records
        self.wandb: WandbRun | None = None  # once its run is open
        self.resuming = False
        self.opened = False  # the record is this run's: its end is recorded there
        self._metrics: BinaryIO | None = None
        self._good_length = 0  # bytes of complete lines in metrics.jsonl when resuming
        self._lock: int | None = None
        self._logged: set[tuple[int, tuple[str, ...]]] = set()

    def start(self, project: str, config: dict[str, Any], resuming: bool = False) -> None:
        """Open the record and the W&B run; a resumed run keeps both and their run id.

        A new run refuses a record that finished or can be resumed, and moves the files of
        an attempt that ended before its first checkpoint into ``attempts/<n>/`` (its offline
        W&B folders too, so that the run's upload is the new attempt's alone). Once the
        record is open (``opened``), :meth:`finish` records how the run ended, also when
        this fails (W&B cannot start): call it whatever happens.
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
                    self._guard(self._keep_aside, self.record_dir / record.ATTEMPTS)
                self.write_config(config)
                self._guard(metrics.touch, metrics)
            self.opened = True
        except BaseException:
            self._unlock()
            raise
        # What was logged before an interruption is kept and not logged again.
        self._logged = {(row["step"], _keys(row)) for row in earlier}
        if self.mode != "disabled":
            wandb = WandbRun(self.accelerator, self.mode, self.run_id, self.wandb_dir, self._guard)
            try:
                wandb.start(project, config, earlier)
            finally:
                if wandb.run is not None:  # open: finish() closes it, whatever failed after
                    self.wandb = wandb

    def _keep_aside(self) -> None:
        """An earlier attempt's files, its offline W&B folders with them, into ``attempts/<n>/``."""
        target = record.keep_aside(self.record_dir)
        if target is not None:
            for folder in offline_folders(self.wandb_dir, self.run_id):
                (target / "wandb").mkdir(exist_ok=True)
                folder.rename(target / "wandb" / folder.name)

    def _guard(self, write: Callable[[], Any], path: Path) -> None:
        """Run a write of the record; a failure (a full disk) becomes one line saying what to do."""
        try:
            write()
        except OSError as exc:
            from hpplug.checkpoint_files import CHECKPOINT

            if (self.record_dir / CHECKPOINT).is_dir():
                then = f"continue with: hpplug run --resume {self.record_dir}"
            else:
                then = "start the run again (there is no checkpoint to resume from yet)"
            raise HpplugError(f"cannot write {path}: {exc.strerror or exc}; free space or fix the folder, "
                              f"then {then}") from None

    def write_config(self, config: dict[str, Any]) -> None:
        """The record's config.json: rewritten once a sweep's values have been applied (W&B
        has the sweep's hyperparameters already; what is not one is updated there too)."""
        if self.active:
            path = self.record_dir / record.CONFIG
            self._guard(lambda: record.write_json(path, jsonable(config)), path)
        if self.wandb is not None:
            self.wandb.write_settings(config)

    def wandb_config(self) -> dict[str, Any]:
        """What W&B says the config is: in a sweep, the sweep's values win over argv."""
        return self.wandb.config() if self.wandb is not None else {}

    def update_config(self, values: dict[str, Any]) -> None:
        """Add values derived while building the run (the LR after a scaling rule)."""
        if self.wandb is not None:
            self.wandb.update_config(values)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.active or (step, _keys(metrics)) in self._logged:
            return
        line = json.dumps({"step": step, "time": round(time.time(), 3), **jsonable(metrics)}) + "\n"
        self._guard(lambda: self._append(line.encode()), self.record_dir / record.METRICS)
        if self.wandb is not None:
            self.wandb.log(metrics, step)

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
        """Write the summary, close W&B, print the closing lines; returns the `wandb sync`
        command for offline runs. Does nothing more than unlock unless the record was opened.

        A resumed run that failed before its checkpoint was loaded (no updates to report)
        keeps the summary it had. When the summary cannot be written, a failed run's own
        error is the one reported; any other run reports this one.
        """
        if not self.active or not self.opened:
            self._unlock()
            return None
        summary = {"status": status, **jsonable(summary)}
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
            lines = [closing_line(self.run_id, status, summary, self.record_dir, keep)]
            wandb = self.wandb
            if wandb is not None:
                lines.append(wandb.line(ended=True))  # read from the run while it is open
                hint = wandb.sync_command() if wandb.offline else None
                attempt(lambda: wandb.finish(summary, status, keep), self.wandb_dir)
            if not errors:  # otherwise the error is the last word
                click.echo("\n".join(lines))
        finally:
            self._unlock()
        if errors and status != "failed":
            raise errors[0]
        return hint

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
