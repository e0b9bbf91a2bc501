"""Which trial a sweep starts next, and when it starts no more.

Queued trials first (those a pack could not train, ahead; a rerun's unfinished ones, and
those suggested for a pack that found no free process), then new suggestions of W&B's engine (``wandb_engine``), each a new
:class:`~hpplug.sweep.state.Trial` with a fresh run id; what the W&B server would stop at
stops them: ``run_cap``, the end of a grid, ``metric.target``, and ``--count`` (like
``wandb agent --count``); and, like ``wandb agent``, trials failing in a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpplug.sweep import state, wandb_engine
from hpplug.sweep.spec import SweepSpec, trial_values
from hpplug.sweep.state import SweepState, Trial

MAX_FAILED_IN_A_ROW = 3  # like wandb agent, stop starting trials that all fail at once


@dataclass
class Suggestions:
    """The trials to start, in order, for one runner of a sweep (``state``: its sweep.json)."""

    spec: SweepSpec
    state: SweepState
    runs_dir: Path
    count: int | None = None  # new trials this runner may start (--count)
    queue: list[Trial] = field(default_factory=list)
    started_new: int = 0
    failed_in_a_row: int = 0
    target_reached: bool = False

    @property
    def failing(self) -> bool:
        return self.failed_in_a_row >= MAX_FAILED_IN_A_ROW

    def may_start(self) -> bool:
        """Whether a new trial may be suggested (sets ``state.done`` when run_cap is reached)."""
        cap = self.spec.raw.get("run_cap")
        if cap is not None and len(self.state.trials) >= cap and not self.state.done:
            self.state.done = f"run_cap {cap} reached"
        if self.failing:
            return False
        return not self.state.done and (self.count is None or self.started_new < self.count)

    def new_trial(self) -> Trial | None:
        """W&B's engine's next suggestion as a new trial of the sweep; None when a grid is done."""
        from hpplug.record import new_run_id

        suggestion = wandb_engine.suggest(self.spec, self.state)
        if suggestion is None:
            self.state.done = "grid exhausted: every grid point has run"
            return None
        taken = {t.id for t in self.state.trials}
        run_id = new_run_id()
        while run_id in taken or (self.runs_dir / run_id).exists():
            run_id = new_run_id()
        config = state.plain(suggestion.config)
        trial = Trial(number=len(self.state.trials) + 1, id=run_id, config=config,
                      values=trial_values(self.spec, config), record=str(self.runs_dir / run_id))
        self.state.trials.append(trial)
        self.started_new += 1
        return trial

    def next(self) -> Trial | None:
        """The next trial to start, or None."""
        while self.queue:
            trial = self.queue.pop(0)
            if trial.attempts or not self.halted():
                return trial
            self.state.trials.remove(trial)  # suggested for a pack that had no free process: never was
        return self.new_trial() if self.may_start() else None

    def first(self, trial: Trial) -> None:
        """Queue a trial to train alone ahead of the others (after those queued so before it,
        in trial order)."""
        if trial not in self.queue:
            self.queue.insert(next((i for i, t in enumerate(self.queue) if t.alone is None or t.number > trial.number),
                                   len(self.queue)), trial)

    def halted(self) -> bool:
        """Whether results stop new trials: metric.target reached, or trials failing in a row
        (not run_cap or a grid's end: a trial already suggested within them still starts)."""
        return self.failing or self.target_reached

    def ended(self, trial: Trial) -> list[str]:
        """Count a trial that ended; what to say when that stops new trials."""
        said = []
        self.failed_in_a_row = self.failed_in_a_row + 1 if trial.status == "failed" else 0
        if self.failed_in_a_row == MAX_FAILED_IN_A_ROW:
            said.append(f"{MAX_FAILED_IN_A_ROW} trials failed in a row: no new trials start (see their logs)")
        if trial.status in ("finished", "stopped") and self.spec.reaches_target(trial.metric) and not self.state.done:
            self.state.done = (f"metric.target {self.spec.raw['metric']['target']} reached by trial "
                               f"{trial.number} ({trial.id})")
            self.target_reached = True
            said.append(self.state.done + "; running trials finish, no new ones start")
        return said
