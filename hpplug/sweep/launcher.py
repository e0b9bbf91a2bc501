"""The processes of a sweep's trials: start, watch, stop, adopt and interrupt them.

Each running trial maps to the process that trains it (``handles``): its own, or a pack
process that trains several (``--pack``, ``worker``); ``packs`` are the pack processes,
which count against ``--parallel`` until they exit. A trial is recorded
as ``starting`` (durably) before its process exists, and the process holds the trial's
lock file from the fork on (``trials.start``), so a runner killed between any two steps
leaves a state the next runner reads right.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpplug.errors import HpplugError
from hpplug.sweep import report
from hpplug.sweep.records import read_summary
from hpplug.sweep.spec import SweepSpec
from hpplug.sweep.state import Trial
from hpplug.sweep.trials import Adopted, adopt, alive, command, environment, signal_trainers, start

GRACE_S = 60.0  # how long an interrupted trial may take to checkpoint before it is killed


@dataclass
class Launcher:
    """The running trials of one sweep folder and their processes."""

    spec: SweepSpec
    sweep_dir: Path
    sweep_id: str
    save: Callable[[], None]
    echo: Callable[[str], None]
    parallel: int = 1
    wandb_mode: str | None = None
    handles: dict[str, Any] = field(default_factory=dict)  # trial id -> its running process
    packs: dict[int, Any] = field(default_factory=dict)  # pack number -> its process, until it exits

    @property
    def runs_dir(self) -> Path:
        return self.sweep_dir / "runs"

    def log_file(self, trial: Trial) -> Path:
        """The trial's log: its own, or its pack's (``logs/pack-<n>.log``)."""
        return self.sweep_dir / "logs" / (f"{trial.id}.log" if trial.pack is None else f"pack-{trial.pack}.log")

    def lock_file(self, trial: Trial) -> Path:
        return self.sweep_dir / "logs" / f"{trial.id}.lock"

    def held(self, trial: Trial) -> bool:
        """Whether a process (its last pack's) still holds the trial's lock."""
        return alive(self.lock_file(trial)) is True

    def processes(self) -> int:
        """How many processes run now (a pack's members share one)."""
        live = {h.pid or id(h) for h in self.handles.values()}
        for number, proc in list(self.packs.items()):
            if proc.poll() is None:
                live.add(proc.pid or id(proc))
            else:
                del self.packs[number]
        return len(live)

    def command(self, trial: Trial) -> list[str]:
        return command(self.spec, self.runs_dir, trial.values)

    def env(self, trial: Trial | None) -> dict[str, str]:
        """A trial's environment (its run id and the sweep's group); a pack's has neither."""
        return environment(self.wandb_mode, self.parallel, trial and trial.id, trial and self.sweep_id)

    # starting --------------------------------------------------------------------------
    def mark_starting(self, trial: Trial, pack: int | None = None) -> bool:
        """Record the trial as starting (the caller saves before its process exists);
        whether it resumes from a checkpoint."""
        from hpplug import checkpoint_files as checkpoint

        resume = checkpoint.has_checkpoint(trial.record_dir)
        trial.status, trial.launched, trial.attempts, trial.pack = "starting", time.time(), trial.attempts + 1, pack
        trial.pid = trial.pid_started = None
        trial.stop_requested = False
        return resume

    def spawn(self, trials: list[Trial], argv: list[str], env: dict[str, str], log: Path) -> None:
        """Start ``argv`` holding every trial's lock, then record its pid (and save)."""
        import psutil

        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc = start(argv, env, log, [self.lock_file(t) for t in trials])
        except OSError as exc:  # e.g. a launcher named in command: that is not installed
            for trial in trials:
                trial.status, trial.ended = "failed", time.time()
            self.save()
            raise HpplugError(f"cannot start trial {trials[0].number} ({argv[0]}): {exc.strerror or exc}") from None
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = None
        for trial in trials:
            trial.status, trial.pid, trial.pid_started = "running", proc.pid, created
            self.handles[trial.id] = proc
        self.save()

    def announce(self, trial: Trial, resume: bool, note: str = "") -> None:
        if trial.attempts > 1:
            how = "resuming from its checkpoint" if resume else "starting again"
            self.echo(f"trial {trial.number} {trial.id}: {how} (attempt {trial.attempts})" + (note and f", {note}"))
        else:  # announced as wandb agent does: which trial, which run, which values
            self.echo("\n".join(report.started_lines(self.spec, trial, note)))

    def launch(self, trial: Trial) -> None:
        """One trial in a process of its own, as ``wandb agent`` runs it. A trial started
        again keeps its run id: ``hpplug run`` resumes its checkpoint, or without one keeps
        the earlier attempt's files in ``attempts/<n>/`` of its record."""
        resume = self.mark_starting(trial)
        self.save()
        self.spawn([trial], self.command(trial), self.env(trial), self.log_file(trial))
        self.announce(trial, resume)

    def launch_group(self, trials: list[Trial], alone: str, number: int) -> None:
        """A pack of trials as pack ``number``, or one trial alone (saying why, if given)."""
        if len(trials) > 1:
            self.launch_pack(trials, number)
            return
        if alone:
            self.echo(f"trial {trials[0].number} {trials[0].id}: runs alone ({alone})")
        self.launch(trials[0])

    def launch_pack(self, trials: list[Trial], number: int) -> None:
        """Several trials in one pack process (``worker``), which rebuilds their commands
        from the YAML and ``sweep.json``; each is announced as in pack ``number``."""
        from hpplug.pack import STOP_REQUEST

        resumes = [self.mark_starting(t, pack=number) for t in trials]
        for trial in trials:  # a request to an attempt killed before it saw it
            (trial.record_dir / STOP_REQUEST).unlink(missing_ok=True)
        self.save()
        argv = [sys.executable, "-m", "hpplug.sweep.worker", str(self.spec.path), str(self.sweep_dir),
                *[t.id for t in trials]]
        self.spawn(trials, argv, self.env(None), self.log_file(trials[0]))
        self.packs[number] = self.handles[trials[0].id]
        for trial, resume in zip(trials, resumes):
            self.announce(trial, resume, f"in pack {number} ({len(trials)} trials)")

    # watching --------------------------------------------------------------------------
    def ended(self, trials: list[Trial]) -> list[tuple[Trial, int | None]]:
        """The running trials that ended, with their process's exit code (None: unknown,
        or a pack member whose summary says it ended while the others go on)."""
        out = []
        for trial in trials:
            handle = self.handles.get(trial.id)
            code = handle.poll() if handle is not None else None
            if code is not None:
                out.append((trial, None if isinstance(handle, Adopted) else code))
            elif trial.pack is not None and read_summary(trial.record_dir, trial.launched or 0.0).get("status") in (
                    "finished", "stopped", "failed"):
                out.append((trial, None))
        return out

    def stop(self, trial: Trial) -> None:
        """Ask a running trial to stop after its current update: SIGUSR1, or in a pack a
        ``stop-request`` file in its record (the pack stops that member, the others go on)."""
        from hpplug.pack import STOP_REQUEST

        if trial.pack is None:
            signal_trainers(trial.pid, signal.SIGUSR1)
        else:
            (trial.record_dir / STOP_REQUEST).write_text("hyperband\n")

    def adopt(self, trial: Trial) -> bool:
        """Whether the trial's process, started by an earlier runner, still lives (then it
        is watched as if started here)."""
        live = adopt(self.lock_file(trial), trial.pid, trial.pid_started)
        if live is None:
            return False
        if trial.pack is not None:  # one process for its members (it holds all their locks)
            live = self.packs.setdefault(trial.pack, live)
        self.handles[trial.id] = live
        if live.pid != trial.pid:
            trial.pid, trial.pid_started = live.pid, live.proc.create_time() if live.proc else None
        trial.status = "running"
        self.echo(f"trial {trial.number} {trial.id}: still running (pid {live.pid or '?'}); waiting for it")
        return True

    def interrupt(self, signum: int, running: Callable[[], list[Trial]],
                  finish: Callable[[Trial, int | None], None]) -> None:
        """Forward the signal so trials checkpoint; kill what has not ended after GRACE_S."""
        self.echo(f"interrupted: stopping {len(self.handles)} running trial(s) so they can resume...")
        for handle in {h.pid or id(h): h for h in [*self.handles.values(), *self.packs.values()]}.values():
            try:
                handle.send_signal(signum)
            except (OSError, ProcessLookupError):
                pass
        deadline = time.monotonic() + GRACE_S
        try:
            while self.handles and time.monotonic() < deadline:
                for trial, code in self.ended(running()):
                    finish(trial, code)
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        for trial in running():
            pid = self.handles[trial.id].pid
            try:
                if pid:
                    os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            finish(trial, None)
