"""A sweep YAML as hpplug reads it: loading, and the trials' command lines.

The same file serves ``wandb sweep`` / ``wandb agent`` and ``hpplug sweep``. What is
checked before a trial starts is in ``checks``; a trial's command line, as ``wandb agent``
builds it, in ``macros``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import shlex
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from hpplug.errors import HpplugError

PLUGIN_KEYS = ("plugin", "plugins")
EXAMPLE_COMMAND = 'command: ["${env}", hpplug, run, "${args}"]'
OWN_OPTIONS = ("output_dir", "resume")  # hpplug sweep sets these for every trial
MAX_YAML_BYTES = 1_000_000
MAX_NODES = 100_000  # values in a YAML, aliases counted each time they are used
MAX_DEPTH = 32


def show(value: Any, limit: int = 60) -> str:
    """A value in a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class SweepSpec:
    """One sweep YAML: the raw mapping W&B's engine reads, and where it came from."""

    path: Path
    raw: dict[str, Any]
    text: str

    @property
    def sweep_id(self) -> str:
        """Eight base-36 characters from the YAML's absolute path and content (as parsed:
        editing a comment does not start a new sweep)."""
        content = json.dumps(self.raw, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{self.path.resolve()}\n{content}".encode()).digest()
        number, chars = int.from_bytes(digest[:8], "big"), []
        for _ in range(8):
            number, rest = divmod(number, 36)
            chars.append("0123456789abcdefghijklmnopqrstuvwxyz"[rest])
        return "".join(chars)

    @property
    def metric(self) -> str:
        return self.raw["metric"]["name"]

    @property
    def goal(self) -> str:
        return self.raw["metric"].get("goal", "minimize")

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return self.raw.get("parameters", {})

    def reaches_target(self, value: float | None) -> bool:
        target = self.raw["metric"].get("target")
        if target is None or value is None:
            return False
        return value >= target if self.goal == "maximize" else value <= target


def load(path: str | Path) -> tuple[SweepSpec | None, list[str]]:
    """Read a sweep YAML; returns the spec, or None and why it cannot be a sweep. A file
    that cannot be read at all is one ``HpplugError`` line."""
    path = Path(path)
    try:
        if path.is_dir():
            raise HpplugError(f"sweep file {path} is a folder; give a sweep YAML file such as sweeps/bayes.yaml")
        if path.stat().st_size > MAX_YAML_BYTES:
            return None, [f"the file is larger than {MAX_YAML_BYTES:,} bytes; a sweep YAML is a few settings"]
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HpplugError(f"sweep file {path} does not exist") from None
    except OSError as exc:
        raise HpplugError(f"cannot read sweep file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        return None, [f"not UTF-8 text (byte {exc.start}); a sweep YAML is a text file"]
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. an integer of 5,000 digits
        return None, [f"not valid YAML: {show(' '.join(str(exc).split()), 300)}"]
    except RecursionError:
        return None, ["not a sweep: nested too deeply"]
    if not isinstance(raw, dict):
        return None, ["the file must be a YAML mapping with method, metric, parameters and command"]
    shape = shape_problems(raw)
    if shape:
        return None, shape
    return SweepSpec(path, raw, text), []


# --- shape ------------------------------------------------------------------------------


def shape_problems(raw: Any) -> list[str]:
    """Non-finite numbers, non-JSON values, non-text keys, too deep or too large: what no
    sweep can mean. Walks without recursion and stops at MAX_NODES (alias bombs)."""
    found: list[str] = []
    queue: deque[tuple[Any, str, int]] = deque([(raw, "", 0)])
    seen = 0
    while queue and len(found) < 5:
        node, where, depth = queue.popleft()
        seen += 1
        if seen > MAX_NODES:
            return found + [f"more than {MAX_NODES:,} values (YAML aliases count each time they are used); "
                            "a sweep YAML is a few settings and parameter blocks"]
        if depth > MAX_DEPTH:
            return found + [f"{where[:40] or 'the file'}: nested more than {MAX_DEPTH} levels deep "
                            "(a recursive YAML alias?)"]
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    found.append(f"{where or 'top level'}: key {show(key)} must be text")
                    continue
                queue.append((value, f"{where}.{key}" if where else key, depth + 1))
        elif isinstance(node, list):
            queue += [(value, f"{where}[{i}]", depth + 1) for i, value in enumerate(node)]
        elif isinstance(node, float) and not math.isfinite(node):
            found.append(f"{where}: {node} is not a finite number; write a number such as 0.1")
        elif isinstance(node, int) and not -2**63 <= node < 2**63:
            found.append(f"{where}: {show(node)} is too large (W&B's engine works with 64-bit integers)")
        elif not (node is None or isinstance(node, (str, int, float, bool))):
            found.append(f"{where}: a YAML {type(node).__name__} is not a sweep value; use a number, "
                         "text, true/false, a list or a mapping")
    return found


# --- plugin choices ----------------------------------------------------------------------


def plugin_choices(spec: dict[str, Any]) -> list[list[str]] | None:
    """Every plugin list a trial can get from the ``plugin`` parameter, or None if absent."""
    for key in PLUGIN_KEYS:
        if key in spec.get("parameters", {}):
            p = spec["parameters"][key]
            options = p["values"] if "values" in p else [p.get("value")]
            return [v if isinstance(v, list) else [n.strip() for n in str(v).split(",")] for v in options]
    return None


def command_plugins(command: list[Any]) -> set[str]:
    """Plugins named literally in the YAML's command (``--plugin cosine``, ``--plugin=a,b``)."""
    from hpplug.run_args import split_plugin_names

    tokens, names = [str(c) for c in command], set()
    for i, tok in enumerate(tokens):
        flag, eq, value = tok.partition("=")
        if flag in ("--plugin", "--plugins", "-p"):
            value = value if eq else (tokens[i + 1] if i + 1 < len(tokens) else "")
            try:
                names.update(split_plugin_names((value,)))
            except HpplugError:
                pass
    return names


# --- values as hpplug run takes them -------------------------------------------------


def value_checker(name: str, catalog: dict[str, Any]) -> Callable[[Any], str | None] | None:
    """A function that returns why one value of parameter ``name`` is refused, or None.

    Values are checked as ``wandb agent`` renders them (``str(value)``), through the same
    click types and plugin ``Param.parse`` that ``hpplug run`` uses.
    """
    from hpplug import manager
    from hpplug.config import OPTION_TYPES

    if name in PLUGIN_KEYS:
        def check_plugins(value: Any) -> str | None:
            names = value if isinstance(value, list) else [n.strip() for n in str(value).split(",") if n.strip()]
            try:
                manager.resolve(catalog, [str(n) for n in names])
            except HpplugError as exc:
                return str(exc)
            return None
        return check_plugins
    core = name.replace("-", "_")
    if core in OPTION_TYPES:
        def check_core(value: Any) -> str | None:
            if isinstance(value, (list, dict)):
                return f"--{name} takes one value, not a {type(value).__name__}"
            return trial_problem({name: value}, catalog)
        return check_core
    plugin, _, key = name.partition(".")
    entry = catalog.get(plugin)
    if entry is None or not entry.active or key not in entry.params:
        return None
    param = entry.params[key]

    def check_param(value: Any) -> str | None:
        try:
            param.parse(str(value))
        except ValueError as exc:
            return str(exc)
        return None
    return check_param


def unknown_name(name: str, catalog: dict[str, Any]) -> str | None:
    """Why ``name`` is not something ``hpplug run`` takes, or None if it is."""
    from hpplug.config import OPTION_TYPES

    core = name.replace("-", "_")
    if core in OWN_OPTIONS:
        return f"parameters.{name}: hpplug sweep sets --{core.replace('_', '-')} for every trial; remove it"
    if name in PLUGIN_KEYS or core in OPTION_TYPES:
        return None
    if "." in name:
        plugin, _, key = name.partition(".")
        entry = catalog.get(plugin)
        if entry is None:
            installed = ", ".join(sorted(n for n, e in catalog.items() if e.active)) or "none"
            return f"parameters.{name}: unknown plugin {plugin!r} (installed: {installed})"
        if not entry.active:
            return f"parameters.{name}: plugin {plugin!r} cannot be loaded: {entry.error}"
        if key not in entry.params:
            known = ", ".join(f"{plugin}.{k}" for k in entry.params) or "none"
            return f"parameters.{name}: {plugin} has no parameter {key!r} (it takes: {known})"
        return None
    options = sorted(OPTION_TYPES) + list(PLUGIN_KEYS)
    close = difflib.get_close_matches(core, options, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; see `hpplug run --help`"
    return f"parameters.{name}: not an option of hpplug run{hint}"


def trial_problem(values: dict[str, Any], catalog: dict[str, Any], fixed_plugins: set[str] = frozenset()) -> str | None:
    """Why ``hpplug run`` refuses these values (its option types, then its configuration
    code ``build_config``, as for a run), or None. ``fixed_plugins``: named in command."""
    from hpplug.config import OPTION_TYPES
    from hpplug.run_args import build_config, split_plugin_names

    try:
        chosen = next((values[k] for k in PLUGIN_KEYS if k in values), [])
        names = [str(n) for n in chosen] if isinstance(chosen, list) else split_plugin_names((str(chosen),))
        names += sorted(set(fixed_plugins) - set(names))
        core, plugin_raw = {}, {}
        for key, value in values.items():
            option = key.replace("-", "_")
            if option in OPTION_TYPES:
                core[option] = OPTION_TYPES[option].convert(str(value), None, None)
            elif "." in key and key.partition(".")[0] in names:
                plugin_raw.setdefault(key.partition(".")[0], {})[key.partition(".")[2]] = str(value)
        build_config(catalog, names, plugin_raw, core)
    except click.BadParameter as exc:
        return exc.message
    except (HpplugError, ValueError, TypeError, OverflowError) as exc:
        return str(exc)
    return None


# --- trial command lines --------------------------------------------------------------


def trial_values(spec: SweepSpec, config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The values a trial passes to ``hpplug run``: the suggestion, without the parameters of
    plugins this trial did not choose (``hpplug run`` ignores those only inside a W&B sweep)."""
    values = {k: v["value"] for k, v in config.items()}
    chosen = next((values[k] for k in PLUGIN_KEYS if k in values), None)
    if chosen is None:
        return values
    from hpplug.run_args import split_plugin_names

    names = set(map(str, chosen) if isinstance(chosen, list) else split_plugin_names((str(chosen),)))
    names |= command_plugins(spec.raw.get("command", []))
    return {k: v for k, v in values.items()
            if "." not in k or k.partition(".")[0] in names or k.partition(".")[0] not in _plugin_names(spec)}


def _plugin_names(spec: SweepSpec) -> set[str]:
    return {n for choice in (plugin_choices(spec.raw) or []) for n in choice}


def pretty_command(spec: SweepSpec, values: dict[str, Any]) -> str:
    """A ready-to-paste shell command line for these values (plugins as ``--plugin a,b``)."""
    args = []
    for key, value in values.items():
        if key in PLUGIN_KEYS and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        args.append(f"--{key}={value}")
    words: list[str] = []
    for chunk in (str(c) for c in spec.raw["command"]):
        if chunk == "${args}":
            words += args
        elif not (chunk.startswith("${") and chunk.endswith("}")):
            words.append(chunk)
    return " ".join(shlex.quote(w) for w in words)
