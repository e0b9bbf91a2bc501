"""A run's W&B side: its W&B run, opened through Accelerate's tracker (or a pack member's
own, ``hpplug.pack.member.OwnRun``), and what hpplug adds to W&B's conventions.

The run's URL (online) or where it lies and how to upload it (offline) is printed when it
starts and when it ends; metrics are declared with ``define_metric`` (the epoch as their
axis, so runs with other batch sizes line up; the best value of a loss or an accuracy as
its summary, over the whole run, a resumed one's earlier rows included); the operational
settings sit apart from the hyperparameters in W&B's config. A resumed run sends W&B the
rows it lost when the process died. ``hpplug.tracking.Tracker`` drives it beside the
local record.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from pathlib import Path
from typing import Any, Callable

import click

from hpplug.config import SETTINGS, tag_list

AXIS = "epoch"  # every row hpplug logs holds it (fractional between epochs)
# W&B's summary of a metric by the last word of its name: its best value, not its last.
BEST = {"loss": "min", "accuracy": "max"}


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it (anything else as its text)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def wandb_view(config: dict[str, Any]) -> dict[str, Any]:
    """W&B's config for a record's: the hyperparameters at the top, by the flat names a sweep
    sets them with, and the run's settings (:data:`hpplug.config.SETTINGS`) apart."""
    return {**{k: v for k, v in config.items() if k not in SETTINGS},
            "settings": {k: config[k] for k in SETTINGS if k in config}}


def best_rule(key: str) -> str | None:
    """``min`` for a loss, ``max`` for an accuracy (``val/loss``, ``test/top5_accuracy``)."""
    return BEST.get(key.rsplit("/", 1)[-1].rsplit("_", 1)[-1])


def offline_folders(folder: Path, run_id: str, run: Any = None) -> list[Path]:
    """The offline W&B folders of run ``run_id`` in ``folder``, oldest first: one per process
    that ran it (W&B names them by start time, adding ``-1``, ``-2`` when two start in the
    same second), and ``run``'s own once open (before W&B writes its file)."""
    names = {path.parent.name for path in folder.glob(f"offline-run-*/run-{run_id}.wandb")}
    if run is not None and run.offline:
        names.add(Path(run.dir).parent.name)
    return [folder / name for name in sorted(names, key=lambda name: (len(name), name))]


class WandbRun:
    """The W&B run of one record: opened by :meth:`start`, closed by :meth:`finish`.

    ``trackers`` is what opens it: an ``Accelerator`` (``init_trackers``, ``get_tracker``,
    ``log``) or an object with those methods. ``guard`` runs a write and turns its failure
    (a full disk) into one line saying what to do (``Tracker._guard``).
    """

    def __init__(self, trackers: Any, mode: str, run_id: str, folder: Path,
                 guard: Callable[[Callable[[], Any], Path], None]) -> None:
        self.trackers, self.mode, self.run_id = trackers, mode, run_id
        self.folder = folder  # W&B's own folder, beside the records
        self.guard = guard
        self.run: Any = None
        self._defined: set[str] = set()  # metrics declared to W&B
        self._best: dict[str, float] = {}  # per loss or accuracy, its best value over the whole run

    @property
    def offline(self) -> bool:
        return bool(self.run.offline)

    def start(self, project: str, config: dict[str, Any], earlier: list[dict[str, Any]]) -> None:
        """Open the run (W&B's ``resume="allow"``: a resumed record continues its run), say
        where it is, and send the ``earlier`` rows of the record that W&B lost."""
        for row in earlier:
            self.note_best(row)
        os.environ.setdefault("WANDB_SILENT", "true")
        # W&B's debug log on a full disk would print a traceback per log call; its run file
        # is written by wandb-core, which only logs the error. The record's own writes, on
        # the same disk, report it; a resume replays what W&B lost.
        logging.raiseExceptions = False
        # An absolute folder: W&B's service process may run in another working directory.
        init = {"mode": self.mode, "id": self.run_id, "dir": str(self.folder.parent.absolute()), "resume": "allow",
                "tags": tag_list(config.get("tags")),
                **{key: config[key] for key in ("entity", "name", "group", "notes") if config.get(key) is not None}}
        self.guard(lambda: self.trackers.init_trackers(
            project, config=jsonable(wandb_view(config)), init_kwargs={"wandb": init}), self.folder)
        self.run = self.trackers.get_tracker("wandb", unwrap=True)
        self.run.define_metric(AXIS)
        click.echo(self.line(ended=False))
        self._replay(earlier)

    def folders(self) -> list[Path]:
        """This run's offline folders (:func:`offline_folders`)."""
        return offline_folders(self.folder, self.run_id, self.run)

    def line(self, ended: bool) -> str:
        """What W&B users expect to see: the run's URL online; offline, where it is saved and,
        at the end, the command that uploads it (every part of a resumed run)."""
        if not self.run.offline:
            return f"W&B run {self.run.name}: {self.run.url}"
        if ended:
            return f"W&B run saved offline; upload it with: {self.sync_command()}"
        return f"W&B run {self.run_id}: offline, in {self.folder / Path(self.run.dir).parent.name}"

    def sync_command(self) -> str:
        return "wandb sync " + " ".join(shlex.quote(str(folder)) for folder in self.folders())

    def _replay(self, earlier: list[dict[str, Any]]) -> None:
        """Send W&B the rows it lost when the process died (a killed process's W&B service
        may not have flushed them; an offline file can even be empty). What W&B already
        has is not sent again: online, the resumed run's step says; offline, its files."""
        if not earlier:
            return
        known = self.run.step
        if self.mode == "offline":
            from hpplug.wandb_file import read_run

            steps = [row["_step"] for folder in self.folders() if (folder / f"run-{self.run_id}.wandb").is_file()
                     for row in read_run(folder / f"run-{self.run_id}.wandb").history]
            known = max(steps, default=-1) + 1
        for row in earlier:
            if row["step"] >= known:
                values = {k: v for k, v in row.items() if k not in ("step", "time")}
                self._define(values)
                self.trackers.log(values, step=row["step"])

    def write_settings(self, config: dict[str, Any]) -> None:
        """The config's settings and versions (W&B has a sweep's hyperparameters already)."""
        apart = {k: v for k, v in wandb_view(jsonable(config)).items() if isinstance(v, dict)}
        self.run.config.update(apart, allow_val_change=True)

    def config(self) -> dict[str, Any]:
        """What W&B says the config is: in a sweep, the sweep's values win over argv."""
        return dict(self.run.config)

    def update_config(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.note_best(metrics)
        self._define(metrics)
        self.trackers.log(metrics, step=step)

    def _define(self, metrics: dict[str, Any]) -> None:
        """Declare each metric to W&B before its first value: its axis, and for a loss or an
        accuracy the best value as its summary (W&B's tables and sweep views show that)."""
        for key in metrics.keys() - self._defined - {AXIS}:
            self._defined.add(key)
            if "*" not in key:  # W&B reads a name ending in * as a pattern
                rule = best_rule(key)
                self.run.define_metric(key, step_metric=AXIS, **({"summary": rule} if rule else {}))

    def note_best(self, metrics: dict[str, Any]) -> None:
        """The best value of each loss and accuracy over the whole run, a resumed one's earlier
        rows included: W&B's own summary only sees what this process logged."""
        for key, value in metrics.items():
            rule = best_rule(key)
            if rule and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._best[key] = {"min": min, "max": max}[rule](self._best.get(key, value), value)

    def finish(self, summary: dict[str, Any], status: str, keep: bool) -> None:
        """The run's summary (unless ``keep``: a resumed run that failed before its
        checkpoint loaded keeps the one it had), then W&B's end: preempted when interrupted."""
        self.run.log({}, commit=True)  # flush the last row first: its values would win
        if not keep:  # a loss's or an accuracy's summary is its best value over the whole run
            best = {key: {best_rule(key): value} for key, value in self._best.items()}
            self.run.summary.update({**summary, **best})
        if status == "interrupted":
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status in ("finished", "stopped") else 1)
