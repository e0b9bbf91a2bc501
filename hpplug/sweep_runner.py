"""The offline sweep runner: W&B's engine suggests, trials run as subprocesses, results go
back to the engine. What the W&B server does for a sweep is done here: ``run_cap``,
``metric.target``, hyperband stops (``sweeps.stop_runs`` + SIGUSR1 to the trial).

State lives in ``<sweep dir>/sweep.json`` (``sweep_state``), rewritten atomically and
durably at every change. A trial is recorded there as ``starting`` before its process
exists, and its process holds the trial's lock file from the fork on (``sweep_trials``),
so a runner killed at any instant leaves nothing unknown: running the same sweep again
waits for trials that still run (adopted), collects those that ended meanwhile, and
starts again, under the same run id, those whose process is gone (``hpplug run`` resumes
from the checkpoint when ``WANDB_RUN_ID`` names a run that has one, and otherwise keeps
the earlier attempt in the record's ``attempts/<n>/``). No trial runs twice.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from hpplug import sweep_report, sweep_state
from hpplug.errors import HpplugError
from hpplug.sweep_spec import SweepSpec, expand_command, trial_values
from hpplug.sweep_trials import (Adopted, adopt, in_training, lock_sweep, metric_value, read_history, read_summary,
                                 signal_trainers, start)

UNFINISHED = ("pending", "starting", "running", "interrupted")  # trials a rerun picks up again
MAX_FAILED_IN_A_ROW = 3  # like wandb agent, stop starting trials that all fail at once
GRACE_S = 60.0  # how long an interrupted trial may take to checkpoint before it is killed


@dataclass
class Runner:
    """Suggests, launches, watches and records the trials of one sweep directory."""

    spec: SweepSpec
    sweep_dir: Path
    parallel: int = 1
    count: int | None = None
    wandb_mode: str | None = None
    seed: str | None = None
    poll_s: float = 0.3
    echo: Any = click.echo
    state: dict[str, Any] = field(default_factory=dict)
    handles: dict[str, Any] = field(default_factory=dict)
    queue: list[dict[str, Any]] = field(default_factory=list)
    started_new: int = 0
    failed_in_a_row: int = 0
    _seen_rows: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Absolute: trial commands and records must not depend on where the runner starts.
        self.sweep_dir = Path(self.sweep_dir).resolve()

    @property
    def runs_dir(self) -> Path:
        return self.sweep_dir / "runs"

    # state -----------------------------------------------------------------------------
    def load(self) -> None:
        """Read and check ``sweep.json`` (a damaged one is one error line), or start afresh.
        Read-only: a dry run or a refused state writes nothing."""
        state = sweep_state.read(self.sweep_dir / "sweep.json", self.spec)
        self.state = state if state is not None else sweep_state.new_state(self.spec, self.seed)
        for trial in self.trials:  # never a path read from the file
            trial["record"] = str(self.runs_dir / trial["id"])

    def save(self) -> None:
        """Write ``sweep.json`` atomically and durably."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        sweep_state.write(self.sweep_dir / "sweep.json", self.state)

    def lock_file(self, trial: dict[str, Any]) -> Path:
        return self.sweep_dir / "logs" / f"{trial['id']}.lock"

    @property
    def trials(self) -> list[dict[str, Any]]:
        return self.state["trials"]

    # the engine ------------------------------------------------------------------------
    def sweep_run(self, trial: dict[str, Any]) -> Any:
        """A trial as W&B's engine sees a run: state, config, history and summary."""
        from sweeps import RunState, SweepRun

        record = Path(trial["record"])
        history = read_history(record)
        summary = read_summary(record, trial.get("launched") or 0.0)
        if trial["status"] in ("running", "starting"):
            summary = {k: v for row in history for k, v in row.items()}
        state = {"running": RunState.running, "starting": RunState.running, "finished": RunState.finished,
                 "stopped": RunState.finished, "failed": RunState.failed, "interrupted": RunState.preempted,
                 "pending": RunState.pending}[trial["status"]]
        return SweepRun(name=trial["id"], state=state, config=trial["config"], history=history,
                        summary_metrics=summary, stopped=trial["status"] == "stopped")

    def suggest(self) -> Any:
        """W&B's next suggestion from every trial so far (None: a grid is exhausted). The
        random state is seeded from the sweep's seed and the trial count: reproducible."""
        import numpy as np
        import sweeps

        runs = [self.sweep_run(t) for t in self.trials]
        digest = hashlib.sha256(f"{self.state['seed']}:{len(self.trials)}".encode()).digest()
        seed = int.from_bytes(digest[:4], "big")
        np.random.seed(seed)
        random.seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return sweeps.next_run(self.spec.raw, runs, validate=False)
            except Exception as exc:  # checked before the sweep started: only the trials' data differ
                raise HpplugError(f"W&B's sweep engine failed on the results so far ({type(exc).__name__}: "
                                  f"{exc}); running trials go on, and the sweep continues when run again") from None

    def may_start(self) -> bool:
        cap = self.spec.raw.get("run_cap")
        if cap is not None and len(self.trials) >= cap and not self.state["done"]:
            self.state["done"] = f"run_cap {cap} reached"
        if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            return False
        return not self.state["done"] and (self.count is None or self.started_new < self.count)

    def new_trial(self) -> dict[str, Any] | None:
        from hpplug.tracking import new_run_id

        suggestion = self.suggest()
        if suggestion is None:
            self.state["done"] = "grid exhausted: every grid point has run"
            return None
        taken = {t["id"] for t in self.trials}
        run_id = new_run_id()
        while run_id in taken or (self.runs_dir / run_id).exists():
            run_id = new_run_id()
        config = sweep_state.plain(suggestion.config)
        trial = {"number": len(self.trials) + 1, "id": run_id, "status": "pending",
                 "config": config, "values": trial_values(self.spec, config),
                 "record": str(self.runs_dir / run_id), "attempts": 0, "metric": None}
        self.trials.append(trial)
        self.started_new += 1
        return trial

    def command(self, trial: dict[str, Any]) -> list[str]:
        """The trial's argv, built from the YAML and its values (never read from disk)."""
        extra = [f"--output-dir={self.runs_dir}"]
        if self.spec.raw.get("project") and "project" not in trial["values"]:
            extra.append(f"--project={self.spec.raw['project']}")
        return expand_command(self.spec.raw["command"], trial["values"], extra, self.spec.raw.get("program"))

    # processes -------------------------------------------------------------------------
    def env(self, trial: dict[str, Any]) -> dict[str, str]:
        from hpplug.tracking import resolve_mode

        env = dict(os.environ)
        for key in ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_SERVICE"):
            env.pop(key, None)
        env.update({"WANDB_RUN_ID": trial["id"], "WANDB_RUN_GROUP": self.state["sweep_id"],
                    "WANDB_MODE": resolve_mode(self.wandb_mode), "PYTHONUNBUFFERED": "1",
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])})
        if self.parallel > 1 and "OMP_NUM_THREADS" not in env:
            # K trials on N cores: N // K threads each, not N each (oversubscription is slow).
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.parallel))
        return env

    def launch(self, trial: dict[str, Any]) -> None:
        """Record the trial as starting (durably), then start it holding its lock, then
        record its pid: a kill between any two steps leaves a state the next runner reads right.
        A trial started again keeps its run id: ``hpplug run`` resumes its checkpoint, or
        without one keeps the earlier attempt's files in ``attempts/<n>/`` of its record."""
        import psutil

        from hpplug import checkpoint

        resume = checkpoint.has_checkpoint(Path(trial["record"]))
        trial.update(status="starting", launched=time.time(), attempts=trial["attempts"] + 1, pid=None,
                     pid_started=None, stop_requested=False)
        self.save()
        argv = self.command(trial)
        (self.sweep_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            proc = start(argv, self.env(trial), self.sweep_dir / "logs" / f"{trial['id']}.log", self.lock_file(trial))
        except OSError as exc:  # e.g. a launcher named in command: that is not installed
            trial.update(status="failed", ended=time.time())
            self.save()
            raise HpplugError(f"cannot start trial {trial['number']} ({argv[0]}): {exc.strerror or exc}") from None
        trial.update(status="running", pid=proc.pid)
        try:
            trial["pid_started"] = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            trial["pid_started"] = None
        self.handles[trial["id"]] = proc
        self.save()
        if trial["attempts"] > 1:
            how = "resuming from its checkpoint" if resume else "starting again"
            self.echo(f"trial {trial['number']} {trial['id']}: {how} (attempt {trial['attempts']})")
        else:  # announced as wandb agent does: which trial, which run, which values
            self.echo("\n".join(sweep_report.started_lines(self.spec, trial)))

    def finish(self, trial: dict[str, Any], exit_code: int | None, interrupted: bool = False) -> None:
        """Record how a trial ended, print its line, and check metric.target."""
        record = Path(trial["record"])
        summary = read_summary(record, trial.get("launched") or 0.0)
        status = summary.get("status")
        if status not in ("finished", "stopped", "interrupted"):
            status = "stopped" if trial.get("stop_requested") and exit_code in (0, -getattr(signal, "SIGUSR1", 10)) \
                else "failed"
        if interrupted and status == "failed":
            status = "interrupted"  # we killed it; it starts again on the next run
        trial.update(status=status, exit_code=exit_code, ended=time.time(),
                     metric=metric_value(self.spec.metric, summary, read_history(record)))
        self.handles.pop(trial["id"], None)
        self.report_trial(trial)
        self.failed_in_a_row = self.failed_in_a_row + 1 if status == "failed" else 0
        if self.failed_in_a_row == MAX_FAILED_IN_A_ROW:
            self.echo(f"{MAX_FAILED_IN_A_ROW} trials failed in a row: no new trials start (see their logs)")
        if status in ("finished", "stopped") and self.spec.reaches_target(trial["metric"]) and not self.state["done"]:
            self.state["done"] = (f"metric.target {self.spec.raw['metric']['target']} reached by trial "
                                  f"{trial['number']} ({trial['id']})")
            self.echo(self.state["done"] + "; running trials finish, no new ones start")
        self.save()

    def total(self) -> int | None:
        """How many trials the sweep will have, when that is known (grid size, run_cap)."""
        from hpplug.sweep_checks import grid_size

        cap = self.spec.raw.get("run_cap")
        size = grid_size(self.spec.parameters) if self.spec.raw["method"] == "grid" else None
        return cap if size is None else size if cap is None else min(size, cap)

    def report_trial(self, trial: dict[str, Any]) -> None:
        done = sum(t["status"] in ("finished", "stopped", "failed") for t in self.trials)
        summary = read_summary(Path(trial["record"]), trial.get("launched") or 0.0)
        self.echo(sweep_report.ended_line(self.spec, trial, summary, done, self.total()))
        if trial["status"] == "failed":
            log = self.sweep_dir / "logs" / f"{trial['id']}.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-4:] if log.exists() else []
            for line in tail:
                self.echo(f"    | {line}")
            self.echo(f"    full log: {log}")

    def poll(self) -> None:
        for trial in [t for t in self.trials if t["id"] in self.handles]:
            handle = self.handles[trial["id"]]
            code = handle.poll()
            if code is not None:
                self.finish(trial, None if isinstance(handle, Adopted) else code)

    def early_terminate(self) -> None:
        """Hyperband through W&B's ``stop_runs`` whenever a running trial logged new rows."""
        if "early_terminate" not in self.spec.raw:
            return
        running = [t for t in self.trials if t["id"] in self.handles]
        counts = {t["id"]: len(read_history(Path(t["record"]))) for t in running}
        if all(self._seen_rows.get(k) == n for k, n in counts.items()):
            return
        self._seen_rows.update(counts)
        import sweeps

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                to_stop = sweeps.stop_runs(self.spec.raw, [self.sweep_run(t) for t in self.trials], validate=False)
            except Exception as exc:  # checked before the sweep started: only the trials' data differ
                self.echo(f"hyperband skipped this round: W&B's engine failed ({type(exc).__name__}: {exc})")
                return
        by_id = {t["id"]: t for t in running}
        for run in to_stop:  # W&B's runs are named by trial id: map each back to its own trial
            trial = by_id.get(run.name)
            if trial is None or trial.get("stop_requested") or not trial.get("pid") or not in_training(trial):
                continue
            signal_trainers(trial["pid"], signal.SIGUSR1)
            trial["stop_requested"] = True
            self.echo("\n".join(sweep_report.stopping_lines(self.spec, trial, run)))
            self.save()

    # the loop --------------------------------------------------------------------------
    def pick_up(self) -> None:
        """On a rerun: wait for trials whose process still lives (adopted), collect those that
        ended meanwhile, and queue the rest (never started, or gone) to start again."""
        for trial in [t for t in self.trials if t["status"] in UNFINISHED]:
            if trial["status"] == "pending":
                self.queue.append(trial)
                continue
            live = adopt(self.lock_file(trial), trial.get("pid"), trial.get("pid_started"))
            if live is not None:
                self.handles[trial["id"]] = live
                if live.pid != trial.get("pid"):
                    trial.update(pid=live.pid, pid_started=live.proc.create_time() if live.proc else None)
                trial["status"] = "running"
                self.echo(f"trial {trial['number']} {trial['id']}: still running (pid {live.pid or '?'}); waiting for it")
                continue
            summary = read_summary(Path(trial["record"]), trial.get("launched") or 0.0)
            if summary.get("status") in ("finished", "stopped"):
                self.finish(trial, None)
            else:
                trial["status"] = "interrupted"
                self.queue.append(trial)
        self.save()

    def next_trial(self) -> dict[str, Any] | None:
        if self.queue:
            return self.queue.pop(0)
        return self.new_trial() if self.may_start() else None

    def loop(self) -> None:
        self.pick_up()
        while True:
            self.poll()
            self.early_terminate()
            while len(self.handles) < self.parallel:
                trial = self.next_trial()
                if trial is None:
                    break
                self.launch(trial)
            if not self.handles:
                self.save()
                return
            time.sleep(self.poll_s)

    def interrupt(self, signum: int) -> None:
        """Forward the signal so trials checkpoint; kill what has not ended after GRACE_S."""
        self.echo(f"interrupted: stopping {len(self.handles)} running trial(s) so they can resume...")
        for trial in [t for t in self.trials if t["id"] in self.handles]:
            try:
                self.handles[trial["id"]].send_signal(signum)
            except (OSError, ProcessLookupError):
                pass
        deadline = time.monotonic() + GRACE_S
        try:
            while self.handles and time.monotonic() < deadline:
                for trial in [t for t in self.trials if t["id"] in self.handles]:
                    code = self.handles[trial["id"]].poll()
                    if code is not None:
                        self.finish(trial, code, interrupted=True)
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        for trial in [t for t in self.trials if t["id"] in self.handles]:
            pid = self.handles[trial["id"]].pid
            try:
                if pid:
                    os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            self.finish(trial, None, interrupted=True)
        self.save()

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
            return 1 if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW else 0
        except KeyboardInterrupt:
            self.interrupt(received["signum"])
            return 128 + received["signum"]
        finally:
            signal.signal(signal.SIGTERM, previous)
            lock.close()
