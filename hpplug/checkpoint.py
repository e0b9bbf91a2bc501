"""Checkpoints, resume and stop requests: a run that is killed loses at most the updates
since its last checkpoint, and a resumed run ends with exactly the weights and metrics of
an uninterrupted one.

A checkpoint is ``<record dir>/checkpoint/``, in a format hpplug writes and reads itself:
``model``, ``optimizer``, ``loop`` (counters, running sums, metrics so far), ``rng.<rank>``
(each process's python, numpy, torch and CUDA generators), ``plugin.<name>`` (each plugin's
``state_dict``, by name) and ``scaler`` (fp16 only), each as ``.json`` + ``.safetensors``
(:mod:`hpplug.statefile`: no pickle, so loading a checkpoint runs no code); ``run.json``,
the configuration the run started from; and ``manifest.json``, every file's size and
sha256, written last. Anything missing, damaged or not fitting the run is refused in one
line that names the part and the folder, never resumed into a different run.

A save writes ``checkpoint.tmp/``, renames ``checkpoint/`` to ``checkpoint.old/`` and
``checkpoint.tmp/`` to ``checkpoint/``, then deletes ``checkpoint.old/``. A kill at any
instant leaves a complete checkpoint among the three folders; the loader takes the newest
(the manifest's sequence number) and the next save tidies up. A failed write (a full
disk) stops the run with one line and keeps the last complete checkpoint.

This module writes and loads; :mod:`hpplug.checkpoint_files` finds and reads the folders
and the manifest without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from hpplug import runstate, statefile
from hpplug.atomic import fsync_dir, write_atomic, write_durable
from hpplug.checkpoint_files import (CHECKPOINT, FORMAT, MANIFEST, PREVIOUS, RUN, STAGING, Saved, has_checkpoint,
                                     latest, state_stem)
from hpplug.errors import HpplugError

if TYPE_CHECKING:
    from hpplug.loop import Loop

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


def save(loop: Loop) -> Path:
    """Save every process's state into ``<record>/checkpoint`` (see the module's docstring)."""
    acc, record = loop.accelerator, Path(loop.tracker.record_dir)
    staging, main = record / STAGING, loop.accelerator.is_main_process
    sequence = []

    def begin() -> None:
        sequence.append(_tidy(record))
        os.mkdir(staging)

    try:
        _together(acc, begin if main else None, record)
        _together(acc, lambda: _write_parts(loop, staging), record)
        _together(acc, (lambda: _commit(loop, record, sequence[0])) if main else None, record)
    except HpplugError:
        if main and not (staging / MANIFEST).exists():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return record / CHECKPOINT


def _together(acc: Any, step: Callable[[], Any] | None, record: Path, action: str = "save") -> None:
    """Run ``step`` on this process (``None``: nothing to do here); then every process
    learns whether any failed, so that none waits forever for one that gave up."""
    error: Exception | None = None
    if step is not None:
        try:
            step()
        except Exception as exc:
            error = exc
    failed = error is not None
    if acc.num_processes > 1:
        failed = acc.reduce(torch.tensor([float(failed)], device=acc.device), reduction="sum").item() > 0
    if isinstance(error, OSError):
        kept = (f"the last complete checkpoint is kept; once that is fixed, resume with: hpplug run --resume {record}"
                if has_checkpoint(record) else "no checkpoint of this run was saved yet")
        raise HpplugError(f"cannot write the checkpoint in {record}: {error.strerror or error} "
                          f"({error.filename}); {kept}") from None
    if error is not None:
        raise error
    if failed:
        raise HpplugError(f"another process could not {action} its part of the checkpoint in {record}")


def _write_parts(loop: Loop, staging: Path) -> None:
    acc = loop.accelerator
    statefile.write(staging, f"rng.{acc.process_index}", runstate.rng_state())
    if not acc.is_main_process:
        return
    statefile.write(staging, "model", acc.unwrap_model(loop.model).state_dict())
    statefile.write(staging, "optimizer", loop.optimizer.state_dict())
    statefile.write(staging, "loop", loop.state.state_dict())
    if acc.scaler is not None:
        statefile.write(staging, "scaler", acc.scaler.state_dict())
    for name, plugin in loop.plugins.items():
        try:
            statefile.write(staging, state_stem(name), plugin.state_dict())
        except TypeError as exc:
            raise HpplugError(f"plugin {name}: its state_dict() cannot be checkpointed: {exc}") from None
    write_durable(staging / RUN, (json.dumps({"config": loop.start_config}, indent=2) + "\n").encode())


def _commit(loop: Loop, record: Path, sequence: int) -> None:
    """Write the manifest, the mark of a complete folder, then make it the checkpoint."""
    staging = record / STAGING
    files = {}
    for path in sorted(staging.iterdir()):
        data = path.read_bytes()
        files[path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"format": FORMAT, "sequence": sequence, "update": loop.progress.update,
                "epoch": loop.progress.epoch, "processes": loop.accelerator.num_processes,
                "plugins": list(loop.plugins), "files": files}
    write_atomic(staging / MANIFEST, json.dumps(manifest, indent=1))  # a manifest is whole or absent
    _install(record)


def _install(record: Path) -> None:
    """Make the complete ``checkpoint.tmp/`` the checkpoint."""
    final, staging, previous = record / CHECKPOINT, record / STAGING, record / PREVIOUS
    if previous.exists():
        shutil.rmtree(previous)
    if final.exists():
        os.rename(final, previous)
    os.rename(staging, final)
    fsync_dir(record)
    if previous.exists():
        shutil.rmtree(previous)


def _tidy(record: Path) -> int:
    """Leave only the newest complete checkpoint, as ``checkpoint/``, whatever a killed
    save left; returns the sequence number of the next one."""
    if not has_checkpoint(record):
        for name in (STAGING, PREVIOUS):
            shutil.rmtree(record / name, ignore_errors=True)
        return 0
    best = latest(record)
    if best.folder.name == STAGING:
        _install(record)
    elif best.folder.name == PREVIOUS:
        for name in (STAGING, CHECKPOINT):
            if (record / name).exists():
                shutil.rmtree(record / name)
        os.rename(record / PREVIOUS, record / CHECKPOINT)
        fsync_dir(record)
    else:
        for name in (STAGING, PREVIOUS):
            if (record / name).exists():
                shutil.rmtree(record / name)
    return best.manifest["sequence"] + 1


def restore(loop: Loop, record_dir: Path) -> None:
    """Load the newest complete checkpoint of ``record_dir`` into ``loop``, on every process."""
    saved = latest(Path(record_dir))
    _together(loop.accelerator, lambda: _load(loop, saved), Path(record_dir), action="load")


def _load(loop: Loop, saved: Saved) -> None:
    acc, m, plugins = loop.accelerator, saved.manifest, loop.plugins
    if m["processes"] != acc.num_processes:
        raise HpplugError(f"checkpoint {saved.folder} was saved by {m['processes']} process(es), this run has "
                          f"{acc.num_processes}: resume it with {m['processes']}")
    if sorted(m["plugins"]) != sorted(plugins):
        raise HpplugError(f"checkpoint {saved.folder} holds the state of plugins {m['plugins']}, this run uses "
                          f"{list(plugins)}: resume it with the plugins it was saved with")
    _apply(saved, "model", lambda s: runstate.load_model(acc.unwrap_model(loop.model), s))
    _apply(saved, "optimizer", lambda s: runstate.load_optimizer(loop.optimizer, s))
    _apply(saved, "loop", loop.state.load_state_dict)
    if acc.scaler is not None:
        _apply(saved, "scaler", acc.scaler.load_state_dict)
    for name, plugin in plugins.items():
        _apply(saved, state_stem(name), plugin.load_state_dict)
    _apply(saved, f"rng.{acc.process_index}", runstate.set_rng)


def _apply(saved: Saved, name: str, load: Callable[[Any], Any]) -> None:
    """Read one state and hand it to ``load``; whatever ``load`` cannot take is refused."""
    state = saved.state(name)
    try:
        load(state)
    except HpplugError:
        raise
    except Exception as exc:
        raise saved.refuse(name + ".*", f"does not fit this run: {' '.join(str(exc).split())[:300]}") from None


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

    @staticmethod
    def _too_late(signum: int, frame: Any) -> None:
        """A stop request once training is over: nothing is left to stop."""

    def __exit__(self, *exc: Any) -> None:
        stop = getattr(signal, "SIGUSR1", None)
        for signum, previous in self._previous.items():
            # SIGUSR1's default action would kill the run while it writes its record and closes
            # its W&B run (a sweep polls, so its request can come that late). A handler, not
            # SIG_IGN: processes this one starts later do not inherit it.
            signal.signal(signum, self._too_late if signum == stop and previous == signal.SIG_DFL else previous)
