"""What a finished (or interrupted) sweep shows: a table sorted by the metric, the best
configuration as a ready ``hpplug run`` command line, ``summary.json`` and a picture of
the metric against each searched parameter."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from hpplug.atomic import write_atomic
from hpplug.sweep.spec import SweepSpec, pretty_command
from hpplug.sweep.records import is_count
from hpplug.sweep.state import SweepState, Trial

RANKED = ("finished", "stopped")  # statuses whose metric is a real result
PARALLEL = "parallel_coordinates.png"  # beside the plot: the parallel-coordinates view


def searched(spec: SweepSpec) -> list[str]:
    """Parameters that vary between trials (constants are not worth a column or a plot)."""
    out = []
    for name, p in spec.parameters.items():
        if isinstance(p, dict) and not ("value" in p or len(p.get("values", [None, None])) < 2):
            out.append(name)
    return out


def show(value: Any) -> str:
    """A short text for a parameter or metric value."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def settings(spec: SweepSpec, values: dict[str, Any]) -> list[str]:
    """``name=value`` for each parameter that varies across the sweep and this trial uses."""
    return [f"{name}={show(values[name])}" for name in searched(spec) if name in values]


def fit(head: str, items: list[str], columns: int | None = None, wrap: bool = False, sep: str = "  ") -> list[str]:
    """``head`` then ``items``, ``sep`` apart, in lines of at most ``columns`` characters
    (the terminal's width by default): one line cut with an ellipsis, or with ``wrap`` the
    items that do not fit continued on indented lines. The head itself is never cut."""
    columns = columns or shutil.get_terminal_size().columns
    lines = [head]
    for item in items:
        if len(lines[-1]) + len(sep) + len(item) <= columns:
            lines[-1] += sep + item
        elif not wrap:
            room = columns - len(lines[-1]) - len(sep) - 1
            if room > 0:
                lines[-1] += f"{sep}{item[:room]}…"
            break
        else:
            line = "    " + item
            lines.append(line if len(line) <= columns else line[:columns - 1] + "…")
    return lines


def hyperband_reason(spec: SweepSpec, run: Any) -> str:
    """Why W&B's hyperband stops ``run``, in the metric's own sign (the engine negates it
    when maximizing) and from the run's own history (its ``early_terminate_info`` lines are
    one list shared by every run, so their last line may be another run's)."""
    info = getattr(run, "early_terminate_info", None) or {}
    history = run.metric_history(spec.metric, filter_invalid=True)
    passed = [(band, threshold) for band, threshold in zip(info.get("bands", []), info.get("thresholds", []))
              if band <= len(history)]
    if not passed or not history:
        return "hyperband"
    band, threshold = passed[-1]
    maximize = spec.goal == "maximize"
    threshold = -threshold if maximize else threshold
    side = "below" if maximize else "above"
    if (spec.raw.get("early_terminate") or {}).get("strict") is True:
        return (f"{spec.metric} {show(float(history[band - 1]))} at step {band} is {side} {show(float(threshold))}, "
                f"hyperband's threshold at step {band}")
    best = max(history) if maximize else min(history)
    return (f"best {spec.metric} {show(float(best))} in {len(history)} steps is {side} {show(float(threshold))}, "
            f"hyperband's threshold at step {band}")


def started_lines(spec: SweepSpec, trial: Trial, note: str = "") -> list[str]:
    """A trial announced as it starts: number, run id, ``note`` (e.g. its pack) and the
    values that vary (wrapped)."""
    started = f"started {note}" if note else f"{'started':<8}"
    return fit(f"trial {trial.number} {trial.id} {started}", settings(spec, trial.values), wrap=True)


def log_tail(log: Path, lines: int = 4, error: Any = None) -> list[str]:
    """The end of a failed trial's log, and where the whole log is. A packed trial shares its
    log with the other members: its own ``error`` (from its summary) is shown instead."""
    if error is not None:
        tail = [f"error: {str(error)[:300]}"]  # read from its record: untrusted, kept short
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-lines:] if log.exists() else []
    return [*(f"    | {line}" for line in tail), f"    full log: {log}"]


def stopping_lines(spec: SweepSpec, trial: Trial, run: Any) -> list[str]:
    """The hyperband stop of a trial, with its own metric and the threshold (wrapped)."""
    return fit(f"trial {trial.number} {trial.id}: stopping early (hyperband):",
               hyperband_reason(spec, run).split(), wrap=True, sep=" ")


def ended_line(spec: SweepSpec, trial: Trial, summary: dict[str, Any], done: int, total: int | None) -> str:
    """One line for a trial that ended: number and run id (as announced), status, metric,
    where a stopped one stopped (from its record), time, then the values, cut to fit."""
    head = f"trial {trial.number} {trial.id} {trial.status:<8}  {spec.metric}={show(trial.metric)}"
    if trial.status == "stopped" and all(is_count(summary.get(k)) for k in ("epochs_done", "updates")):
        head += f"  at update {summary['updates']} ({summary['epochs_done']} epochs done)"
    elif trial.status == "finished" and trial.stop_requested:
        head += "  (the stop request came after its training)"
    took = trial.ended - (trial.launched or trial.ended)
    progress = f"({took:.1f} s; {done}{'' if total is None else f'/{total}'} done)"
    return fit(head, [progress, *settings(spec, trial.values)])[0]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_scored(trial: Trial) -> bool:
    """A trial with a real result: finished or stopped, with a finite metric."""
    return trial.status in RANKED and is_number(trial.metric)


def ranked(spec: SweepSpec, trials: list[Trial]) -> list[Trial]:
    """Trials best first: finished and stopped ones by the metric, then the rest."""
    sign = -1 if spec.goal == "maximize" else 1

    def key(t: dict[str, Any]) -> tuple[int, float, int]:
        scored = is_scored(t)
        return (0 if scored else 1, sign * t.metric if scored else 0.0, t.number)
    return sorted(trials, key=key)


def best_trial(spec: SweepSpec, trials: list[Trial]) -> Trial | None:
    """The best finished trial; a stopped one only when none finished."""
    for statuses in (("finished",), ("stopped",)):
        scored = [t for t in ranked(spec, trials) if t.status in statuses and is_number(t.metric)]
        if scored:
            return scored[0]
    return None


def table(spec: SweepSpec, trials: list[Trial]) -> str:
    """A plain-text table: rank, trial, status, metric, then each searched parameter."""
    params = searched(spec)
    header = ["#", "trial", "status", spec.metric, *params]
    rows = [[str(t.number), t.id, t.status, show(t.metric),
             *[show(t.values.get(p, "(unused)")) for p in params]] for t in ranked(spec, trials)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(spec: SweepSpec, state: SweepState, plot: Path | None) -> dict[str, Any]:
    """The content of the sweep's ``summary.json``."""
    trials = state.trials
    best = best_trial(spec, trials)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return {
        "sweep_id": state.sweep_id, "yaml": state.yaml, "method": spec.raw["method"],
        "metric": {"name": spec.metric, "goal": spec.goal}, "done": state.done,
        "trials_total": len(trials), "counts": counts,
        "best": None if best is None else {
            "trial": best.id, "number": best.number, "metric": best.metric,
            "values": best.values, "command": pretty_command(spec, best.values),
            "record": best.record},
        "plot": None if plot is None else str(plot),
        "trials": [{k: getattr(t, k) for k in ("number", "id", "status", "metric", "values", "record", "exit_code")}
                   for t in ranked(spec, trials)],
    }


def plot(spec: SweepSpec, trials: list[Trial], path: Path) -> Path | None:
    """Save the sweep's pictures (``plot``) beside ``path``; returns the main one
    (the metric against each parameter), None when there is nothing to draw."""
    from hpplug.sweep import plot as sweep_plot

    return sweep_plot.save(spec, trials, path.parent).get("scatter")


def write(spec: SweepSpec, state: SweepState, sweep_dir: Path) -> tuple[str, dict[str, Any]]:
    """Write ``summary.json`` and the plot; return the text to print and the summary."""
    png = plot(spec, state.trials, sweep_dir / "metric_vs_params.png")
    data = summary(spec, state, png)
    write_atomic(sweep_dir / "summary.json", json.dumps(data, indent=2, default=str) + "\n")
    lines = [table(spec, state.trials), ""]
    if data["best"]:
        b = data["best"]
        lines += [f"best: trial {b['number']} ({b['trial']}) {spec.metric} = {show(b['metric'])}",
                  f"  {b['command']}"]
        best_config = write_best_config(b["record"], sweep_dir)
        if best_config is not None:
            lines.append(f"  or: hpplug run --config {best_config}")
    else:
        lines.append(f"no trial has reported {spec.metric} yet")
    lines.append(f"summary: {sweep_dir / 'summary.json'}" + (f"   plots: {png}  {png.parent / PARALLEL}" if png else ""))
    return "\n".join(lines), data


def write_best_config(record: str | None, sweep_dir: Path) -> Path | None:
    """The best trial's whole configuration (its record's config.json) as ``best-config.yaml``,
    for ``hpplug run --config``; None when that record holds no readable configuration."""
    from hpplug import configfile
    from hpplug.errors import HpplugError
    from hpplug.record import read_json

    path = sweep_dir / "best-config.yaml"
    try:
        config = read_json(Path(record) / configfile.RECORD_FILE) if record else None
        if config is not None:
            write_atomic(path, configfile.from_record(config, str(Path(record) / configfile.RECORD_FILE)))
            return path
    except HpplugError:
        pass
    path.unlink(missing_ok=True)  # an earlier best's file would name the wrong trial
    return None


__all__ = ["best_trial", "ended_line", "fit", "hyperband_reason", "log_tail", "plot", "ranked", "searched", "settings",
           "started_lines", "stopping_lines", "summary", "table", "write", "write_best_config"]
