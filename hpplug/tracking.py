"""Where a run's results go: W&B through Accelerate's tracker, and a local run record.

The local record (``<output-dir>/<run-id>/config.json``, ``metrics.jsonl``,
``summary.json``) is written line by line as the run goes, so nothing is lost when a
run fails, and it needs no W&B account to read. Only the main process writes. How each
file is written and read back (atomically, torn lines, damage) is in ``hpplug.record``.

W&B's conventions: the run's URL (online) or where it lies and how to upload it (offline)
is printed when it starts and when it ends; metrics are declared with ``define_metric``
(the epoch as their axis, so runs with other batch sizes line up; the best value of a
loss or an accuracy as its summary); the operational settings sit apart from the
hyperparameters in W&B's config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import netrc
import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

import click

from hpplug import record
from hpplug.config import SETTINGS, tag_list
from hpplug.errors import HpplugError

if TYPE_CHECKING:
    from accelerate import Accelerator

AXIS = "epoch"  # every row hpplug logs holds it (fractional between epochs)
# W&B's summary of a metric by the last word of its name: its best value, not its last.
BEST = {"loss": "min", "accuracy": "max"}


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


def wandb_view(config: dict[str, Any]) -> dict[str, Any]:
    """W&B's config for a record's: the hyperparameters at the top, by the flat names a sweep
    sets them with, and the run's settings (:data:`hpplug.config.SETTINGS`) apart."""
    return {**{k: v for k, v in config.items() if k not in SETTINGS},
            "settings": {k: config[k] for k in SETTINGS if k in config}}


def best_rule(key: str) -> str | None:
    """``min`` for a loss, ``max`` for an accuracy (``val/loss``, ``test/top5_accuracy``)."""
    return BEST.get(key.rsplit("/", 1)[-1].rsplit("_", 1)[-1])


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
        self.wandb_run: Any = None
        self.resuming = False
        self.opened = False  # the record is this run's: its end is recorded there
        self._metrics: BinaryIO | None = None
        self._good_length = 0  # bytes of complete lines in metrics.jsonl when resuming
        self._lock: int | None = None
        self._logged: set[tuple[int, tuple[str, ...]]] = set()
        self._defined: set[str] = set()  # metrics declared to W&B
        self._best: dict[str, float] = {}  # per loss or accuracy, its best value over the whole run

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
        for row in earlier:
            self._note_best(row)
        if self.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            # W&B's debug log on a full disk would print a traceback per log call; its
            # run file is written by wandb-core, which only logs the error. The record's
            # own writes, on the same disk, report it; a resume replays what W&B lost.
            logging.raiseExceptions = False
            # An absolute folder: W&B's service process may run in another working directory.
            init = {"mode": self.mode, "id": self.run_id, "dir": str(self.record_dir.parent.absolute()), "resume": "allow",
                    "tags": tag_list(config.get("tags")),
                    **{key: config[key] for key in ("entity", "name", "group", "notes") if config.get(key) is not None}}
            self._guard(lambda: self.accelerator.init_trackers(
                project, config=_jsonable(wandb_view(config)), init_kwargs={"wandb": init}), self.wandb_dir)
            self.wandb_run = self.accelerator.get_tracker("wandb", unwrap=True)
            self.wandb_run.define_metric(AXIS)
            click.echo(self.wandb_line(ended=False))
            self._replay(earlier)

    def _keep_aside(self) -> None:
        """An earlier attempt's files, its offline W&B folders with them, into ``attempts/<n>/``."""
        target = record.keep_aside(self.record_dir)
        if target is not None:
            for folder in self.offline_folders():
                (target / "wandb").mkdir(exist_ok=True)
                folder.rename(target / "wandb" / folder.name)

    def offline_folders(self) -> list[Path]:
        """This run's offline W&B folders, oldest first: one per process that ran it (W&B names
        them by start time, adding ``-1``, ``-2`` when two start in the same second)."""
        names = {path.parent.name for path in self.wandb_dir.glob(f"offline-run-*/run-{self.run_id}.wandb")}
        if self.wandb_run is not None and self.wandb_run.offline:
            names.add(Path(self.wandb_run.dir).parent.name)  # this process's, before W&B writes its file
        return [self.wandb_dir / name for name in sorted(names, key=lambda name: (len(name), name))]

    def wandb_line(self, ended: bool) -> str:
        """What W&B users expect to see: the run's URL online; offline, where it is saved and,
        at the end, the command that uploads it (every part of a resumed run)."""
        run = self.wandb_run
        if not run.offline:
            return f"W&B run {run.name}: {run.url}"
        if ended:
            return f"W&B run saved offline; upload it with: {self.sync_command()}"
        return f"W&B run {self.run_id}: offline, in {self.wandb_dir / Path(run.dir).parent.name}"

    def sync_command(self) -> str:
        return "wandb sync " + " ".join(shlex.quote(str(folder)) for folder in self.offline_folders())

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

    def _replay(self, earlier: list[dict[str, Any]]) -> None:
        """Send W&B the rows it lost when the process died (a killed process's W&B service
        may not have flushed them; an offline file can even be empty). What W&B already
        has is not sent again: online, the resumed run's step says; offline, its files."""
        if not earlier:
            return
        known = self.wandb_run.step
        if self.mode == "offline":
            from hpplug.wandb_file import read_run

            steps = [row["_step"] for folder in self.offline_folders() if (folder / f"run-{self.run_id}.wandb").is_file()
                     for row in read_run(folder / f"run-{self.run_id}.wandb").history]
            known = max(steps, default=-1) + 1
        for row in earlier:
            if row["step"] >= known:
                values = {k: v for k, v in row.items() if k not in ("step", "time")}
                self._define(values)
                self.accelerator.log(values, step=row["step"])

    def write_config(self, config: dict[str, Any]) -> None:
        """The record's config.json: rewritten once a sweep's values have been applied (W&B
        has the sweep's hyperparameters already; what is not one is updated there too)."""
        if self.active:
            path = self.record_dir / record.CONFIG
            self._guard(lambda: record.write_json(path, _jsonable(config)), path)
        if self.wandb_run is not None:
            apart = {k: v for k, v in wandb_view(_jsonable(config)).items() if isinstance(v, dict)}
            self.wandb_run.config.update(apart, allow_val_change=True)  # settings, versions

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
        self._note_best(metrics)
        if self.wandb_run is not None:
            self._define(metrics)
            self.accelerator.log(metrics, step=step)

    def _define(self, metrics: dict[str, Any]) -> None:
        """Declare each metric to W&B before its first value: its axis, and for a loss or an
        accuracy the best value as its summary (W&B's tables and sweep views show that)."""
        for key in metrics.keys() - self._defined - {AXIS}:
            self._defined.add(key)
            if "*" not in key:  # W&B reads a name ending in * as a pattern
                rule = best_rule(key)
                self.wandb_run.define_metric(key, step_metric=AXIS, **({"summary": rule} if rule else {}))

    def _note_best(self, metrics: dict[str, Any]) -> None:
        """The best value of each loss and accuracy over the whole run, a resumed one's earlier
        rows included: W&B's own summary only sees what this process logged."""
        for key, value in metrics.items():
            rule = best_rule(key)
            if rule and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._best[key] = {"min": min, "max": max}[rule](self._best.get(key, value), value)

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
            lines = [closing_line(self.run_id, status, summary, self.record_dir, keep)]
            if self.wandb_run is not None:
                lines.append(self.wandb_line(ended=True))  # read from the run while it is open
                hint = self.sync_command() if self.wandb_run.offline else None
                attempt(lambda: self._finish_wandb(summary, status, keep), self.wandb_dir)
            if not errors:  # otherwise the error is the last word
                click.echo("\n".join(lines))
        finally:
            self._unlock()
        if errors and status != "failed":
            raise errors[0]
        return hint

    def _finish_wandb(self, summary: dict[str, Any], status: str, keep: bool) -> None:
        self.wandb_run.log({}, commit=True)  # flush the last row first: its values would win
        if not keep:  # a loss's or an accuracy's summary is its best value over the whole run
            best = {key: {best_rule(key): value} for key, value in self._best.items()}
            self.wandb_run.summary.update({**summary, **best})
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
