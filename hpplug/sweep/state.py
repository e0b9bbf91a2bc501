"""A sweep's state on disk: ``<sweep dir>/sweep.json``, the one record of its trials.

In memory it is a :class:`SweepState` holding :class:`Trial` records; on disk it is JSON,
written atomically and durably (``hpplug.atomic``) and read back as untrusted: a torn,
hand-edited or foreign file is refused in one line naming what is wrong, never half-used.
Names in it that become paths (trial ids) or W&B fields (the sweep id) must be plain
names; a trial's record folder is always ``<sweep dir>/runs/<id>``, never a path read
from the file. The format is version 1 (``pack`` is optional: files of runners before
``--pack`` read as they are).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hpplug.atomic import write_atomic
from hpplug.errors import HpplugError
from hpplug.sweep.spec import shape_problems

VERSION = 1
# pending: suggested, not started; starting: recorded, its process may or may not exist yet;
# running: started (pid known); interrupted: to be resumed; the rest are final.
STATUSES = ("pending", "starting", "running", "interrupted", "finished", "stopped", "failed")
UNFINISHED = ("pending", "starting", "running", "interrupted")  # trials a rerun picks up again
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NUMBER = (int, float)
# The optional fields of a trial and their JSON types (absent or null: not known yet).
_OPTIONAL = (("metric", _NUMBER), ("pid", (int,)), ("pid_started", _NUMBER), ("launched", _NUMBER),
             ("ended", _NUMBER), ("exit_code", (int,)), ("stop_requested", (bool,)), ("pack", (int,)),
             ("alone", (str,)))


def is_name(value: Any) -> bool:
    """A plain name: safe as a file name and as a W&B id (no /, no .., not absolute)."""
    return isinstance(value, str) and NAME.fullmatch(value) is not None


@dataclass
class Trial:
    """One trial of a sweep: what W&B's engine suggested, and how its run went.

    ``record`` is derived (``<sweep dir>/runs/<id>``), written for readers of the file and
    never read back. ``pack`` is the pack process the trial last ran in (None: alone);
    ``alone`` says why it is never packed again (a pack found it could not train it)."""

    number: int
    id: str
    config: dict[str, Any]
    values: dict[str, Any]
    record: str
    status: str = "pending"
    attempts: int = 0
    metric: float | None = None
    launched: float | None = None
    ended: float | None = None
    pid: int | None = None
    pid_started: float | None = None
    exit_code: int | None = None
    stop_requested: bool = False
    pack: int | None = None
    alone: str | None = None  # why it trains alone from now on: its pack could not train it

    @property
    def record_dir(self) -> Path:
        return Path(self.record)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, number: int, spec: Any, runs_dir: Path) -> Trial:
        """The trial ``number`` (1-based) read from ``sweep.json``; a problem is one
        ``HpplugError`` line (``trial N: ...``) for :func:`read` to complete."""
        problem = _trial_problem(data, number, spec)
        if problem:
            raise HpplugError(f"trial {number}: {problem}")
        known = {f.name for f in fields(cls)} - {"record"}
        return cls(**{k: data[k] for k in known if data.get(k) is not None}, record=str(runs_dir / data["id"]))


@dataclass
class SweepState:
    """The whole sweep: which YAML, which seed, whether it is done, and its trials."""

    sweep_id: str
    yaml: str
    config: dict[str, Any]
    seed: str
    created: float | None = None
    done: str | None = None
    trials: list[Trial] = field(default_factory=list)
    updated: float | None = None
    version: int = VERSION

    @classmethod
    def new(cls, spec: Any, seed: str | None) -> SweepState:
        return cls(sweep_id=spec.sweep_id, yaml=str(spec.path), config=spec.raw, seed=seed or spec.sweep_id,
                   created=time.time())

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "trials"}
        return {**data, "trials": [t.to_json() for t in self.trials]}


def write(path: Path, state: SweepState) -> None:
    state.updated = time.time()
    write_atomic(path, json.dumps(state.to_json(), indent=2) + "\n")


def read(path: Path, spec: Any) -> SweepState | None:
    """The state in ``path`` (None when there is none), checked against the sweep's YAML;
    trials' records are in ``runs/`` beside it."""
    if not path.exists():
        return None
    fix = "restore it, or give another --dir to start the sweep afresh"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HpplugError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):  # JSON and UTF-8 errors are ValueErrors
        raise HpplugError(f"{path} is damaged: not valid JSON (torn or edited); {fix}") from None
    if not isinstance(data, dict):
        raise HpplugError(f"{path} is damaged: not a JSON object; {fix}")
    if data.get("config") != _as_json(spec.raw):
        raise HpplugError(f"{path.parent} holds a sweep made from a different YAML; "
                          "use another --dir (or the YAML it was made from)")
    try:
        return _state_from_json(data, spec, path.parent / "runs")
    except HpplugError as exc:
        raise HpplugError(f"{path} is damaged: {exc}; {fix}") from None


def _state_from_json(data: dict[str, Any], spec: Any, runs_dir: Path) -> SweepState:
    if data.get("version") != VERSION:
        raise HpplugError(f"version {data.get('version')!r} is not {VERSION}")
    if not is_name(data.get("sweep_id")):
        raise HpplugError(f"sweep_id {data.get('sweep_id')!r} is not a plain name")
    for key, types, optional in (("seed", (str,), False), ("yaml", (str,), False),
                                 ("done", (str,), True), ("created", _NUMBER, True), ("updated", _NUMBER, True)):
        if not _typed(data.get(key), types, optional):
            raise HpplugError(f"{key} {data.get(key)!r} has the wrong type")
    if not isinstance(data.get("trials"), list):
        raise HpplugError("trials is not a list")
    trials: list[Trial] = []
    for i, item in enumerate(data["trials"]):
        trial = Trial.from_json(item, i + 1, spec, runs_dir)
        if any(t.id == trial.id for t in trials):
            raise HpplugError(f"trial {i + 1}: id {trial.id} is used twice")
        trials.append(trial)
    return SweepState(sweep_id=data["sweep_id"], yaml=data["yaml"], config=data["config"], seed=data["seed"],
                      created=data.get("created"), done=data.get("done"), trials=trials, updated=data.get("updated"))


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def plain(value: Any) -> Any:
    """``value`` with numpy scalars (W&B's engine suggests ``numpy.int64``) as JSON numbers."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _typed(value: Any, types: tuple[type, ...], optional: bool = False) -> bool:
    if value is None:
        return optional
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _trial_problem(trial: Any, number: int, spec: Any) -> str | None:
    if not isinstance(trial, dict):
        return "not an object"
    if trial.get("number") != number:
        return f"number {trial.get('number')!r} is not {number}"
    if not is_name(trial.get("id")):
        return f"id {trial.get('id')!r} is not a plain name (letters, digits, _ and -)"
    if trial.get("status") not in STATUSES:
        return f"status {trial.get('status')!r} is not one of {', '.join(STATUSES)}"
    config, values = trial.get("config"), trial.get("values")
    if not isinstance(config, dict) or not all(isinstance(v, dict) and "value" in v for v in config.values()):
        return "config is not {name: {value: ...}}"
    if not set(config) <= set(spec.parameters):
        return f"config names parameters the YAML does not have: {sorted(set(config) - set(spec.parameters))}"
    if not isinstance(values, dict) or any(k not in config or config[k]["value"] != v for k, v in values.items()):
        return "values do not match config"
    shape = shape_problems(values)
    if shape:
        return f"values: {shape[0]}"
    for key, types, optional in (("attempts", (int,), False), *((k, t, True) for k, t in _OPTIONAL)):
        if key in trial or not optional:
            if not _typed(trial.get(key), types, optional):
                return f"{key} {trial.get(key)!r} has the wrong type"
    if trial["attempts"] < 0 or (trial.get("pid") is not None and trial["pid"] <= 0):
        return "attempts or pid is negative"
    if trial.get("pack") is not None and trial["pack"] < 1:
        return "pack is not a positive number"
    return None
