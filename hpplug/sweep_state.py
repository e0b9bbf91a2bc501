"""A sweep's state on disk: ``<sweep dir>/sweep.json``, the one record of its trials.

It is written atomically and durably (``hpplug.atomic``) and read back as untrusted: a
torn, hand-edited or foreign file is refused in one line naming what is wrong, never
half-used. Names in it that become paths (trial ids) or W&B fields (the sweep id) must be
plain names; a trial's record folder is always ``<sweep dir>/runs/<id>``, never a path
read from the file.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from hpplug.atomic import write_atomic
from hpplug.errors import HpplugError
from hpplug.sweep_spec import shape_problems

VERSION = 1
# pending: suggested, not started; starting: recorded, its process may or may not exist yet;
# running: started (pid known); interrupted: to be resumed; the rest are final.
STATUSES = ("pending", "starting", "running", "interrupted", "finished", "stopped", "failed")
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NUMBER = (int, float)


def is_name(value: Any) -> bool:
    """A plain name: safe as a file name and as a W&B id (no /, no .., not absolute)."""
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def new_state(spec: Any, seed: str | None) -> dict[str, Any]:
    return {"version": VERSION, "sweep_id": spec.sweep_id, "yaml": str(spec.path),
            "config": spec.raw, "seed": seed or spec.sweep_id, "created": time.time(),
            "done": None, "trials": []}


def write(path: Path, state: dict[str, Any]) -> None:
    state["updated"] = time.time()
    write_atomic(path, json.dumps(state, indent=2) + "\n")


def read(path: Path, spec: Any) -> dict[str, Any] | None:
    """The state in ``path`` (None when there is none), checked against the sweep's YAML."""
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
    problem = _problem(data, spec)
    if problem:
        raise HpplugError(f"{path} is damaged: {problem}; {fix}")
    return data


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def plain(value: Any) -> Any:
    """``value`` with numpy scalars (W&B's engine suggests ``numpy.int64``) as JSON numbers."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _typed(value: Any, types: tuple[type, ...], optional: bool = False) -> bool:
    if value is None:
        return optional
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _problem(data: dict[str, Any], spec: Any) -> str | None:
    if data.get("version") != VERSION:
        return f"version {data.get('version')!r} is not {VERSION}"
    if not is_name(data.get("sweep_id")):
        return f"sweep_id {data.get('sweep_id')!r} is not a plain name"
    for key, types, optional in (("seed", (str,), False), ("yaml", (str,), False),
                                 ("done", (str,), True), ("created", _NUMBER, True)):
        if not _typed(data.get(key), types, optional):
            return f"{key} {data.get(key)!r} has the wrong type"
    trials = data.get("trials")
    if not isinstance(trials, list):
        return "trials is not a list"
    ids: set[str] = set()
    for i, trial in enumerate(trials):
        problem = _trial_problem(trial, i + 1, spec)
        if problem:
            return f"trial {i + 1}: {problem}"
        if trial["id"] in ids:
            return f"trial {i + 1}: id {trial['id']} is used twice"
        ids.add(trial["id"])
    return None


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
    checks = (("attempts", (int,), False), ("metric", _NUMBER, True), ("pid", (int,), True),
              ("pid_started", _NUMBER, True), ("launched", _NUMBER, True), ("ended", _NUMBER, True),
              ("exit_code", (int,), True), ("stop_requested", (bool,), True))
    for key, types, optional in checks:
        if key in trial or not optional:
            if not _typed(trial.get(key), types, optional):
                return f"{key} {trial.get(key)!r} has the wrong type"
    if trial["attempts"] < 0 or (trial.get("pid") is not None and trial["pid"] <= 0):
        return "attempts or pid is negative"
    return None
