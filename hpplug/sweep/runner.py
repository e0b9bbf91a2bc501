"""The offline sweep runner: W&B's engine suggests (``wandb_engine``), trials run as
subprocesses (``launcher``), alone or, with ``--pack K``, several in one pack process
(``packing``, ``worker``); results go back to the engine. What the W&B server does for a
sweep is done here: ``run_cap``, ``metric.target``, hyperband stops (SIGUSR1 to the trial,
a ``stop-request`` file to a pack's member).

State lives in ``<sweep dir>/sweep.json`` (``state``), rewritten atomically and durably at
every change. A trial is recorded there as ``starting`` before its process exists, and its
process holds the trial's lock file from the fork on, so a runner killed at any instant
leaves nothing unknown: running the same sweep again waits for trials that still run
(adopted), collects those that ended meanwhile, and starts again, under the same run id,
those whose process is gone (``hpplug run`` resumes from the checkpoint when
``WANDB_RUN_ID`` names a run that has one, and otherwise keeps the earlier attempt in the
record's ``attempts/<n>/``; a pack's members likewise, packed again). No trial runs twice.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from hpplug.errors import HpplugError
from hpplug.sweep import packing, report, state, wandb_engine
from hpplug.sweep.launcher import Launcher
from hpplug.sweep.records import ended_status, metric_value, read_history, read_summary
from hpplug.sweep.spec import SweepSpec
from hpplug.sweep.state import UNFINISHED, SweepState, Trial
from hpplug.sweep.suggestions import Suggestions
from hpplug.sweep.trials import lock_sweep



@dataclass
class Runner:
    """Suggests, launches, watches and records the trials of one sweep directory."""

    spec: SweepSpec
    sweep_dir: Path
    parallel: int = 1
    count: int | None = None
    wandb_mode: str | None = None
    seed: str | None = None
    pack: int = 1  # trials per process (--pack); 1: each alone
    catalog: dict[str, Any] | None = None  # the installed plugins, to group trials in packs
    poll_s: float = 0.3
    echo: Any = click.echo
    state: SweepState = None  # type: ignore[assignment]  # set by load()
    _seen_rows: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Absolute: trial commands and records must not depend on where the runner starts.
        self.sweep_dir = Path(self.sweep_dir).resolve()
        self.procs: Launcher = None  # type: ignore[assignment]  # set by load()
        self.next: Suggestions = None  # type: ignore[assignment]  # set by load()
        self.waiting: set[str] = set()  # trials refused by a pack whose process still holds their lock

    @property
    def runs_dir(self) -> Path:
        return self.sweep_dir / "runs"

    @property
    def trials(self) -> list[Trial]:
        return self.state.trials

    def load(self) -> None:
        """Read and check ``sweep.json`` (a damaged one is one error line), or start afresh.
        Read-only: a dry run or a refused state writes nothing."""
        self.state = state.read(self.sweep_dir / "sweep.json", self.spec) or SweepState.new(self.spec, self.seed)
        self.procs = Launcher(self.spec, self.sweep_dir, self.state.sweep_id, self.save, self.echo, self.parallel,
                              self.wandb_mode)
        self.next = Suggestions(self.spec, self.state, self.runs_dir, self.count)

    def save(self) -> None:
        """Write ``sweep.json`` atomically and durably."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        state.write(self.sweep_dir / "sweep.json", self.state)

    def plugins(self) -> dict[str, Any]:
        """The installed plugins (``hpplug sweep`` passes the catalog it checked the YAML with)."""
        if self.catalog is None:
            from hpplug.plugin_cache import catalog

            self.catalog = catalog()
        return self.catalog

    def running(self) -> list[Trial]:
        return [t for t in self.trials if t.id in self.procs.handles]

    def finish(self, trial: Trial, exit_code: int | None, interrupted: bool = False) -> None:
        """Record how a trial ended, print its line, and check metric.target."""
        summary = read_summary(trial.record_dir, trial.launched or 0.0)
        if self.refused(trial, summary):
            self.save()
            return
        status = ended_status(summary, trial.stop_requested, exit_code, interrupted)
        trial.status, trial.exit_code, trial.ended = status, exit_code, time.time()
        trial.metric = metric_value(self.spec.metric, summary, read_history(trial.record_dir))
        self.procs.handles.pop(trial.id, None)
        done = sum(t.status in ("finished", "stopped", "failed") for t in self.trials)
        self.echo(report.ended_line(self.spec, trial, summary, done, wandb_engine.total(self.spec)))
        if status == "failed":
            error = summary.get("error") if trial.pack else None
            self.echo("\n".join(report.log_tail(self.procs.log_file(trial), error=error)))
        for line in self.next.ended(trial):
            self.echo(line)
        self.save()

    def refused(self, trial: Trial, summary: dict[str, Any]) -> bool:
        """Whether the trial's pack could not train it (``hpplug.pack.PackRefused``: found
        once its model was built or trained): then it is queued to train alone, first, and
        never packed again; it starts once its pack's process lets go of its lock
        (:meth:`start_more`), from its packed checkpoint if it has one (else its packed
        attempt is kept in its record's ``attempts/``)."""
        from hpplug.pack import REFUSED

        if trial.pack is None or summary.get("status") != "failed" or summary.get(REFUSED) is not True:
            return False
        error = summary.get("error")
        trial.alone, trial.status = str(error)[:300] if error else "no reason recorded", "interrupted"
        self.procs.handles.pop(trial.id, None)
        self.next.first(trial)
        self.echo(f"trial {trial.number} {trial.id}: its pack could not train it: {trial.alone}; it runs alone next")
        return True

    def early_terminate(self) -> None:
        """Hyperband through W&B's ``stop_runs`` whenever a running trial logged new rows."""
        if "early_terminate" not in self.spec.raw:
            return
        try:
            to_stop = wandb_engine.to_stop(self.spec, self.trials, self.running(), self._seen_rows)
        except HpplugError as exc:
            self.echo(f"hyperband skipped this round: {exc}")
            return
        for trial, run in to_stop:
            self.procs.stop(trial)
            trial.stop_requested = True
            self.echo("\n".join(report.stopping_lines(self.spec, trial, run)))
            self.save()

    # the loop ------------------------------------------------------------------------
    def pick_up(self) -> None:
        """On a rerun: wait for trials whose process still lives (adopted), collect those that
        ended meanwhile, and queue the rest (never started, or gone) to start again."""
        for trial in [t for t in self.trials if t.status in UNFINISHED]:
            if trial.status == "pending":
                self.next.queue.append(trial)
                continue
            if self.procs.adopt(trial):
                continue
            summary = read_summary(trial.record_dir, trial.launched or 0.0)
            if summary.get("status") in ("finished", "stopped"):
                self.finish(trial, None)
            elif not self.refused(trial, summary):
                trial.status = "interrupted"
                self.next.queue.append(trial)
        self.save()

    def start_more(self) -> None:
        """Start processes up to ``parallel``: up to ``pack`` trials each, grouped into packs
        (``packing``); what does not fit a free process waits at the front of the queue."""
        while self.procs.processes() < self.parallel:
            batch = [t for t in (self.next.next() for _ in range(self.pack)) if t is not None]
            # A trial its pack refused waits while that pack's process lives: it holds its lock.
            waiting = [t for t in batch if t.alone is not None and self.procs.held(t)]
            for trial in waiting:
                if trial.id not in self.waiting:
                    self.echo(f"trial {trial.number} {trial.id}: waits for its pack's process to end (it holds the "
                              f"trial's lock {self.procs.lock_file(trial)})")
            self.waiting = {t.id for t in waiting}
            self.next.queue[:0] = waiting
            batch = [t for t in batch if t not in waiting]
            if not batch:
                return
            groups = [([t], "") for t in batch] if self.pack == 1 else \
                packing.groups(batch, self.pack, self.plugins(), self.procs.command, self.state.sweep_id)
            free = self.parallel - self.procs.processes()
            self.next.queue[:0] = [t for group, _ in groups[free:] for t in group]
            for group, alone in groups[:free]:
                self.procs.launch_group(group, alone, 1 + max((t.pack or 0 for t in self.trials), default=0))

    def loop(self) -> None:
        self.pick_up()
        while True:
            for trial, code in self.procs.ended(self.running()):
                self.finish(trial, code)
            self.early_terminate()
            self.start_more()
            if not self.procs.processes() and not self.waiting:  # a pack whose members all ended may still be closing
                self.save()
                return
            time.sleep(self.poll_s)

    def run(self) -> int:
        """Run until done (or ``count`` new trials); returns the exit code: 0 done, 1 when
        trials keep failing, 128 + signal when interrupted (SIGINT, SIGTERM)."""
        self.load()  # a damaged state is refused before anything is written
        lock = lock_sweep(self.sweep_dir)
        try:
            self.load()  # again: now no other runner can change it
        except HpplugError:
            lock.close()
            raise
        self.save()
        received = {"signum": signal.SIGINT}

        def terminate(signum: int, frame: Any) -> None:
            received["signum"] = signum
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            self.loop()
            return 1 if self.next.failing else 0
        except KeyboardInterrupt:
            self.procs.interrupt(received["signum"], self.running,
                                 lambda trial, code: self.finish(trial, code, interrupted=True))
            self.save()
            return 128 + received["signum"]
        finally:
            signal.signal(signal.SIGTERM, previous)
            lock.close()
