"""One trial of a pack: a complete run beside the others.

A member has what ``hpplug.engine.run`` gives a run: its record (``config.json``,
``metrics.jsonl``, ``summary.json``, checkpoints in the same format), its W&B run, its
plugins, its ``Loop`` (config, counters, torch optimizer, model: the one its plugins see)
and its random numbers (:mod:`hpplug.pack.rng`). Only the forward, backward and step are
shared (:mod:`hpplug.pack.train`).

Early termination from outside: a file ``<record>/stop-request`` (any content), written by
a sweep runner, stops the member after its current update (one ``stat`` per member and
update), as SIGUSR1 stops a run alone: status ``stopped``, no ``hpplug_train_end`` and no
test, its summary says at which update; the file is removed once the record is closed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from hpplug import checkpoint, engine, manager
from hpplug.components import Dataset
from hpplug.config import with_environment
from hpplug.errors import HpplugError, summary_fields
from hpplug.feed import RunData
from hpplug.loop import Loop
from hpplug.pack.rng import MemberRng
from hpplug.pack.support import REFUSED, STOP_REQUEST, MemberSpec, PackRefused
from hpplug.plugin import Plugin
from hpplug.tracking import Tracker, resolve_mode

STOPPED_BY_FILE = f"on request ({STOP_REQUEST} file, e.g. a sweep's early termination)"


@contextlib.contextmanager
def one_working_set() -> Iterator[None]:
    """While the members open their W&B runs: W&B reads every installed distribution's
    metadata to write each run's requirements.txt (~0.13 s a run here); the members share one
    process and one environment, so it is read once, and each member's file is as alone."""
    import wandb.util

    original = getattr(wandb.util, "working_set", None)
    if original is None:  # another W&B: nothing to share
        yield
        return
    installed: list[Any] = []

    def working_set() -> Iterator[Any]:
        if not installed:
            installed.extend(original())
        return iter(installed)

    wandb.util.working_set = working_set
    try:
        yield
    finally:
        wandb.util.working_set = original


class OwnRun:
    """What ``hpplug.tracking.Tracker`` asks of Accelerate for W&B, for one of several W&B
    runs open in one process. Accelerate's W&B tracker stores the config through
    ``wandb.config``, the process's current run, which is another member's once several are
    open: each member opens its own run (``reinit="create_new"``) with its own config."""

    is_main_process = True

    def __init__(self) -> None:
        self.run: Any = None

    def init_trackers(self, project_name: str, config: dict[str, Any] | None = None,
                      init_kwargs: dict[str, dict[str, Any]] | None = None) -> None:
        import wandb

        kwargs = (init_kwargs or {}).get("wandb", {})
        self.run = wandb.init(project=project_name, config=config, reinit="create_new", **kwargs)

    def get_tracker(self, name: str, unwrap: bool = False) -> Any:
        return self.run

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        self.run.log(values, step=step)


class Member:
    """One trial: set up as ``hpplug.engine.run`` sets up a run, then trained in a pack."""

    def __init__(self, spec: MemberSpec, device: torch.device) -> None:
        self.config, self.entries, self.run_id, resume = spec
        self.resume_dir = Path(resume) if resume is not None else None
        if self.resume_dir is not None:  # as engine.run: the record folder names the run
            self.run_id, self.config.output_dir = self.resume_dir.name, str(self.resume_dir.parent)
        self.tracker: Tracker | None = None
        self.plugins: dict[str, Plugin] = {}
        self.loop: Loop = None  # type: ignore[assignment]  # set by prepare()
        self.module: torch.nn.Module = None  # type: ignore[assignment]
        self.rng = MemberRng(device)
        self.lr = 0.0  # the LR of the last update, as hpplug.loop logs it
        self.final: dict[str, Any] = {}
        self.exit: tuple[str, BaseException | None] | None = None  # (status, error) once it must leave
        self.signum: int | None = None
        self.pack_size = 0
        self.result: engine.RunResult | None = None

    # --- set-up, in engine.run's order ------------------------------------------------
    def open(self) -> None:
        """The record and the W&B run (refusals, such as a finished run id, come from here)."""
        with_environment(self.config, os.environ)  # W&B's variables, as engine.run reads them
        self.tracker = Tracker(OwnRun(), resolve_mode(self.config.wandb_mode), self.run_id,  # type: ignore[arg-type]
                               self.config.output_dir)
        self.tracker.start(self.config.project, engine.wandb_config(self.config, self.entries),
                           resuming=self.resume_dir is not None)

    def build_plugins(self) -> None:
        self.pm, self.plugins = manager.build(self.entries, self.config.plugin_params)

    @property
    def dataset(self) -> Dataset:
        return next(p for p in self.plugins.values() if isinstance(p, Dataset))

    def prepare(self, accelerator: Accelerator, data: RunData) -> None:
        """Seed, build and adjust the model, build the optimizer (``engine.prepare``), then
        load the checkpoint when resuming; the member's generators are what remains."""
        self.loop = engine.prepare(self.config, self.pm, self.plugins, accelerator, self.tracker, data=data)
        # What hooks get as the model; asked of Accelerate once (unwrap_model looks for
        # DeepSpeed on every call, about a millisecond).
        self.module = self.loop.module
        if self.resume_dir is not None:
            checkpoint.restore(self.loop, self.resume_dir)
        self.rng.capture()
        self.lr = self.loop.base_lrs[0]
        self.tracker.update_config({"effective_lr": self.config.lr, "global_batch_size": self.config.global_batch_size,
                                    "num_processes": self.config.num_processes})

    # --- while training ---------------------------------------------------------------
    @property
    def done_training(self) -> bool:
        """Training is over: the last epoch, a plugin's stop, or already (a resumed run)."""
        s = self.loop.state
        return s.trained or s.stop_reason is not None or s.progress.epoch >= self.config.epochs

    def save(self) -> None:
        """A checkpoint, with the member's random state as its run's own."""
        with self.rng.installed():
            self.loop.save_checkpoint()

    def honour_stop_request(self) -> None:
        """Leave the pack, stopped, if a sweep runner asked (a ``stop-request`` file)."""
        if self.exit is None and (self.tracker.record_dir / STOP_REQUEST).exists():
            self.loop.state.stop_reason = STOPPED_BY_FILE
            self.leave("stopped")

    def leave(self, status: str, error: BaseException | None = None) -> None:
        """Mark the member to leave the pack (the first reason counts)."""
        if self.exit is None:
            self.exit = (status, error)

    # --- the end, as engine.run closes a run -------------------------------------------
    def finish(self, status: str, error: BaseException | None = None) -> engine.RunResult:
        """Write the summary and close the record and the W&B run, whatever happened."""
        summary = engine._summary(self.loop, self.final)
        if status == "failed" and error is not None:
            summary.update(summary_fields(error))
        if self.pack_size:
            summary["pack/size"] = self.pack_size
        if isinstance(error, PackRefused):  # a sweep trains it alone next
            summary[REFUSED] = True
        hint, record_dir = None, Path(self.config.output_dir) / self.run_id
        if self.tracker is not None:  # it records the end only of a record it opened
            try:
                hint = self.tracker.finish(summary, status)
            except HpplugError as exc:  # the summary could not be written (a full disk)
                status = "failed"
                summary.update(summary_fields(exc))
            with contextlib.suppress(OSError):
                (record_dir / STOP_REQUEST).unlink(missing_ok=True)
        self.result = engine.RunResult(self.run_id, status, summary, str(record_dir), hint, self.signum)
        return self.result
