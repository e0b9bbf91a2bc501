"""The processes of a sweep's trials: start, watch, stop, adopt and interrupt them.

Each running trial maps to the process that trains it (``handles``). A trial is recorded
as ``starting`` (durably) before its process exists, and the process holds the trial's
lock file from the fork on (``trials.start``), so a runner killed between any two steps
leaves a state the next runner reads right.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpplug.errors import HpplugError
from hpplug.sweep import report
from hpplug.sweep.spec import SweepSpec
from hpplug.sweep.state import Trial
from hpplug.sweep.trials import Adopted, adopt, command, environment, signal_trainers, start

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

    @property
    def runs_dir(self) -> Path:
        return self.sweep_dir / "runs"

    def log_file(self, trial: Trial) -> Path:
        return self.sweep_dir / "logs" / f"{trial.id}.log"

    def lock_file(self, trial: Trial) -> Path:
        return self.sweep_dir / "logs" / f"{trial.id}.lock"

    def processes(self) -> int:
        """How many processes run now (a pack's members share one)."""
        return len({id(h) for h in self.handles.values()})

    def command(self, trial: Trial) -> list[str]:
        return command(self.spec, self.runs_dir, trial.values)

    def env(self, trial: Trial | None) -> dict[str, str]:
        """A trial's environment (its run id and the sweep's group); a pack's has neither."""
        return environment(self.wandb_mode, self.parallel, trial and trial.id, trial and self.sweep_id)

    # starting --------------------------------------------------------------------------
    def mark_starting(self, trial: Trial, pack: int | None = None) -> bool:
        """Record the trial as starting (the caller saves before its process exists);
        whether it resumes from a checkpoint."""
        from hpplug import checkpoint

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
            self.echo(f"trial {trial.number} {trial.id}: {how} (attempt {trial.attempts}){note}")
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

    # watching --------------------------------------------------------------------------
    def ended(self, trials: list[Trial]) -> list[tuple[Trial, int | None]]:
        """The running trials whose process ended, with its exit code (None: unknown)."""
        out = []
        for trial in trials:
            handle = self.handles.get(trial.id)
            code = handle.poll() if handle is not None else None
            if code is not None:
                out.append((trial, None if isinstance(handle, Adopted) else code))
        return out

    def stop(self, trial: Trial) -> None:
        """Ask a running trial to stop after its current update."""
        signal_trainers(trial.pid, signal.SIGUSR1)

    def adopt(self, trial: Trial) -> bool:
        """Whether the trial's process, started by an earlier runner, still lives (then it
        is watched as if started here)."""
        live = adopt(self.lock_file(trial), trial.pid, trial.pid_started)
        if live is None:
            return False
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
        for handle in {id(h): h for h in self.handles.values()}.values():
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
