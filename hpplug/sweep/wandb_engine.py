"""W&B's sweep engine (the open-source ``sweeps`` package), fed from this sweep's trials.

What the W&B server does with the engine is done here: each trial becomes the run the
engine expects (state, config, history and summary read from its record), suggestions are
reproducible (seeded from the sweep's seed and the trial count), and hyperband's
``stop_runs`` is asked which running trials to stop. The engine was checked against the
YAML before the sweep started, so its failures come from the trials' data: one line.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from typing import Any

from hpplug.errors import HpplugError
from hpplug.sweep.records import in_training, read_history, read_summary
from hpplug.sweep.spec import SweepSpec
from hpplug.sweep.state import SweepState, Trial

# A trial's status as W&B's engine knows a run's state (a pack's members included).
RUN_STATES = {"running": "running", "starting": "running", "finished": "finished", "stopped": "finished",
              "failed": "failed", "interrupted": "preempted", "pending": "pending"}


def sweep_run(trial: Trial) -> Any:
    """A trial as W&B's engine sees a run: state, config, history and summary."""
    from sweeps import RunState, SweepRun

    history = read_history(trial.record_dir)
    summary = read_summary(trial.record_dir, trial.launched or 0.0)
    if trial.status in ("running", "starting"):
        summary = {k: v for row in history for k, v in row.items()}
    return SweepRun(name=trial.id, state=RunState[RUN_STATES[trial.status]], config=trial.config,
                    history=history, summary_metrics=summary, stopped=trial.status == "stopped")


def suggest(spec: SweepSpec, state: SweepState) -> Any:
    """W&B's next suggestion from every trial so far (None: a grid is exhausted)."""
    import numpy as np
    import sweeps

    runs = [sweep_run(t) for t in state.trials]
    digest = hashlib.sha256(f"{state.seed}:{len(state.trials)}".encode()).digest()
    seed = int.from_bytes(digest[:4], "big")
    np.random.seed(seed)
    random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return sweeps.next_run(spec.raw, runs, validate=False)
        except Exception as exc:  # checked before the sweep started: only the trials' data differ
            raise HpplugError(f"W&B's sweep engine failed on the results so far ({type(exc).__name__}: "
                              f"{exc}); running trials go on, and the sweep continues when run again") from None


def to_stop(spec: SweepSpec, trials: list[Trial], running: list[Trial], seen: dict[str, int]) -> list[tuple[Trial, Any]]:
    """The running trials hyperband stops now, each with its W&B run; asked only when a
    running trial logged new rows since the last time (``seen``: rows per trial id). Not a
    trial already asked, nor one outside its training loop (``records.in_training``)."""
    counts = {t.id: len(read_history(t.record_dir)) for t in running}
    if all(seen.get(k) == n for k, n in counts.items()):
        return []
    seen.update(counts)
    by_id = {t.id: t for t in running}
    out = []
    for run in stop_runs(spec, trials):  # W&B's runs are named by trial id: each back to its own trial
        trial = by_id.get(run.name)
        if trial is not None and not trial.stop_requested and trial.pid and in_training(trial):
            out.append((trial, run))
    return out


def stop_runs(spec: SweepSpec, trials: list[Trial]) -> list[Any]:
    """The runs hyperband stops now (named by trial id); an engine failure is an
    ``HpplugError`` (that round is skipped)."""
    import sweeps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return sweeps.stop_runs(spec.raw, [sweep_run(t) for t in trials], validate=False)
        except Exception as exc:  # checked before the sweep started: only the trials' data differ
            raise HpplugError(f"W&B's engine failed ({type(exc).__name__}: {exc})") from None


def total(spec: SweepSpec) -> int | None:
    """How many trials the sweep will have, when that is known (grid size, run_cap)."""
    from hpplug.sweep.checks import grid_size

    cap = spec.raw.get("run_cap")
    size = grid_size(spec.parameters) if spec.raw["method"] == "grid" else None
    return cap if size is None else size if cap is None else min(size, cap)
