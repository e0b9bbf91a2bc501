"""A sweep YAML as hpplug reads it: loading, checking, and the trials' command lines.

The same file serves ``wandb sweep`` / ``wandb agent`` and ``hpplug sweep``. Checks use
W&B's own schema (``sweeps.schema_violations_from_proposed_config``) plus what only hpplug
knows: the options of ``hpplug run`` and the parameters the installed plugins declare.
Trial command lines are built with W&B's own macro code
(``wandb.sdk.launch.sweeps.utils``), exactly as ``wandb agent`` builds them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from hpplug.errors import HpplugError

METHODS = ("grid", "random", "bayes")
KNOWN_METRICS = {"test/accuracy": "maximize", "test/loss": "minimize", "train/loss": "minimize",
                 "train/accuracy": "maximize", "best/test/accuracy": "maximize",
                 "train/samples_per_s": "maximize"}
PLUGIN_KEYS = ("plugin", "plugins")
EXAMPLE_COMMAND = 'command: ["${env}", hpplug, run, "${args}"]'
_GRID_OK = {"categorical", "constant", "int_uniform", "q_uniform"}
# Distributions whose min/max are values of the parameter itself (not exponents).
_VALUE_BOUNDED = {"uniform", "int_uniform", "q_uniform", "log_uniform_values",
                  "q_log_uniform_values", "inv_log_uniform_values"}


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
    """Read a sweep YAML; returns the spec, or None and the reason it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise HpplugError(f"cannot read sweep file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [f"not valid YAML: {' '.join(str(exc).split())}"]
    if not isinstance(raw, dict):
        return None, ["the file must be a YAML mapping with method, metric, parameters and command"]
    return SweepSpec(path, raw, text), []


# --- checks -------------------------------------------------------------------------


def _checker(name: str, catalog: dict[str, Any]) -> Any:
    """A function that returns an error for one value of parameter ``name``, or None.

    Values are checked as ``wandb agent`` renders them (``str(value)``), through the same
    click types and plugin ``Param.parse`` that ``hpplug run`` uses.
    """
    from hpplug.cli import OPTION_TYPES
    from hpplug import manager

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
        ctype = OPTION_TYPES[core]

        def check_core(value: Any) -> str | None:
            try:
                ctype.convert(str(value), None, None)
            except click.BadParameter as exc:
                return exc.message
            return None
        return check_core
    plugin, _, key = name.partition(".")
    entry = catalog.get(plugin)
    if entry is None or entry.cls is None or key not in entry.cls.params:
        return None
    param = entry.cls.params[key]

    def check_param(value: Any) -> str | None:
        try:
            param.parse(str(value))
        except ValueError as exc:
            return str(exc)
        return None
    return check_param


def _unknown_name(name: str, catalog: dict[str, Any]) -> str | None:
    """Why ``name`` is not something ``hpplug run`` takes, or None if it is."""
    from hpplug.cli import OPTION_TYPES

    if name in PLUGIN_KEYS or name.replace("-", "_") in OPTION_TYPES:
        return None
    if "." in name:
        plugin, _, key = name.partition(".")
        entry = catalog.get(plugin)
        if entry is None:
            installed = ", ".join(sorted(n for n, e in catalog.items() if e.cls is not None)) or "none"
            return f"parameters.{name}: unknown plugin {plugin!r} (installed: {installed})"
        if entry.cls is None:
            return f"parameters.{name}: plugin {plugin!r} cannot be loaded: {entry.error}"
        if key not in entry.cls.params:
            known = ", ".join(f"{plugin}.{k}" for k in entry.cls.params) or "none"
            return f"parameters.{name}: {plugin} has no parameter {key!r} (it takes: {known})"
        return None
    options = sorted(OPTION_TYPES) + list(PLUGIN_KEYS)
    close = difflib.get_close_matches(name.replace("-", "_"), options, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; see `hpplug run --help`"
    return f"parameters.{name}: not an option of hpplug run{hint}"


def _plugin_choices(spec: dict[str, Any]) -> list[list[str]] | None:
    """Every plugin list a trial can get from the ``plugin`` parameter, or None if absent."""
    for key in PLUGIN_KEYS:
        if key in spec.get("parameters", {}):
            p = spec["parameters"][key]
            options = p["values"] if "values" in p else [p.get("value")]
            return [v if isinstance(v, list) else [n.strip() for n in str(v).split(",")] for v in options]
    return None


def _parameter_problems(name: str, p: Any, catalog: dict[str, Any], method: Any) -> list[str]:
    if not isinstance(p, dict):
        return [f"parameters.{name}: must be a mapping such as {{values: [...]}} or {{value: x}}"]
    if "parameters" in p:
        return [f"parameters.{name}: nested parameter blocks are not supported by hpplug run; "
                f"write dotted names such as {name}.<param>"]
    if method == "grid" and not ("values" in p or "value" in p or p.get("distribution") in _GRID_OK or (
            isinstance(p.get("min"), int) and isinstance(p.get("max"), int) and "distribution" not in p)):
        return [f"parameters.{name}: grid search needs values: [...] (or int_uniform/q_uniform), "
                f"not {p.get('distribution', 'a continuous range')}"]
    unknown = _unknown_name(name, catalog)
    if unknown:
        return [unknown]
    check = _checker(name, catalog)
    candidates = list(p.get("values", [])) + ([p["value"]] if "value" in p else [])
    distribution = p.get("distribution")
    if distribution in _VALUE_BOUNDED or (distribution is None and "min" in p):
        candidates += [p[k] for k in ("min", "max") if k in p]
    problems = []
    for value in candidates:
        error = check(value) if check else None
        if error:
            problems.append(f"parameters.{name}: {value!r}: {error}")
    return problems


def problems(spec: SweepSpec, catalog: dict[str, Any]) -> list[str]:
    """Everything wrong with a sweep, W&B's schema check first; empty when it can run."""
    import sweeps

    raw, found = spec.raw, []
    try:
        violations = sweeps.schema_violations_from_proposed_config(raw)
        found += [f"schema: {v}" for v in dict.fromkeys(violations)]  # W&B reports min >= max twice
    except (ValueError, TypeError, AttributeError) as exc:
        found.append(f"schema: {exc}")
    if raw.get("method") not in METHODS:
        found.append(f"method: {raw.get('method')!r} is not one of {', '.join(METHODS)} "
                     "(custom schedulers run only on the W&B server)")
    metric = raw.get("metric")
    if not isinstance(metric, dict) or not metric.get("name"):
        found.append("metric: missing; hpplug logs test/accuracy (goal: maximize), test/loss, train/loss")
    command = raw.get("command")
    if not isinstance(command, list) or not command:
        found.append(f"command: missing; hpplug sweeps need e.g. {EXAMPLE_COMMAND}")
    else:
        if "${args}" not in command:
            found.append("command: must pass the trial's parameters with ${args} (hpplug run takes --name=value)")
        if "hpplug" not in [str(c) for c in command]:
            found.append(f"command: must run hpplug, e.g. {EXAMPLE_COMMAND} or a launcher such as "
                         '["${env}", torchrun, --nproc_per_node, "2", -m, hpplug, run, "${args}"]')
    parameters = raw.get("parameters")
    if isinstance(parameters, dict):
        for name, p in parameters.items():
            found += _parameter_problems(str(name), p, catalog, raw.get("method"))
        choices = _plugin_choices(raw)
        fixed = _command_plugins(command if isinstance(command, list) else [])
        for name in parameters:
            plugin = str(name).partition(".")[0] if "." in str(name) else None
            if plugin and plugin in catalog and plugin not in fixed and (
                    choices is None or not any(plugin in c for c in choices)):
                found.append(f"parameters.{name}: plugin {plugin!r} is never selected; add it to the "
                             f"`plugin` parameter (values: [[{plugin}, ...]]) or to command")
    if not found:
        found += _engine_problems(raw)
    return found


def _command_plugins(command: list[Any]) -> set[str]:
    """Plugins named literally in the YAML's command (``--plugin cosine``, ``--plugin=a,b``)."""
    from hpplug.cli import split_plugin_names

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


def _engine_problems(raw: dict[str, Any]) -> list[str]:
    """Ask W&B's engine for a first suggestion (and a hyperband pass) without any run."""
    import sweeps

    found = []
    try:
        sweeps.next_run(raw, [], validate=False)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        found.append(f"{raw.get('method')} search: {exc}")
    if "early_terminate" in raw:
        try:
            sweeps.stop_runs(raw, [], validate=False)
        except (ValueError, KeyError, TypeError) as exc:
            found.append(f"early_terminate: {exc}")
    return found


def warnings_for(spec: SweepSpec) -> list[str]:
    """Things that may be intended but look wrong: an unfamiliar metric, a surprising goal."""
    out = []
    name, goal = spec.raw["metric"]["name"], spec.raw["metric"].get("goal")
    if name not in KNOWN_METRICS:
        out.append(f"metric {name!r} is not one hpplug logs itself ({', '.join(KNOWN_METRICS)}); "
                   "it must come from a plugin")
    elif goal != KNOWN_METRICS[name]:
        out.append(f"metric {name} with goal {goal or 'minimize (the default)'}; did you mean {KNOWN_METRICS[name]}?")
    return out


# --- trial command lines --------------------------------------------------------------


def trial_values(spec: SweepSpec, config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The values a trial passes to ``hpplug run``: the suggestion, without the parameters of
    plugins this trial did not choose (``hpplug run`` ignores those only inside a W&B sweep)."""
    values = {k: v["value"] for k, v in config.items()}
    chosen = next((values[k] for k in PLUGIN_KEYS if k in values), None)
    if chosen is None:
        return values
    from hpplug.cli import split_plugin_names

    names = set(map(str, chosen) if isinstance(chosen, list) else split_plugin_names((str(chosen),)))
    names |= _command_plugins(spec.raw.get("command", []))
    return {k: v for k, v in values.items()
            if "." not in k or k.partition(".")[0] in names or k.partition(".")[0] not in _plugin_names(spec)}


def _plugin_names(spec: SweepSpec) -> set[str]:
    return {n for choice in (_plugin_choices(spec.raw) or []) for n in choice}


def expand_command(command: list[Any], values: dict[str, Any], extra_args: list[str] = (),
                   program: str | None = None) -> list[str]:
    """The argv ``wandb agent`` would run for these values, plus ``extra_args`` after ${args}.

    W&B's ``create_sweep_command`` (``${envvar:NAME}``) and ``create_sweep_command_args``
    render the values; the macro substitution mirrors ``wandb_agent.Agent._command_run``.
    A leading ``hpplug`` runs as ``<this python> -m hpplug`` so the trial uses this install.
    """
    from wandb.sdk.launch.sweeps import utils as wandb_sweep_utils

    expanded = wandb_sweep_utils.create_sweep_command([str(c) for c in command])
    macros = wandb_sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros["args"] = macros["args"] + list(extra_args)
    macros["interpreter"] = [sys.executable]
    macros["program"] = [program] if program else []
    macros["env"] = ["/usr/bin/env"] if os.path.exists("/usr/bin/env") else []
    argv: list[str] = []
    for chunk in expanded:
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += macros.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    for i, tok in enumerate(argv):
        if tok == "hpplug" and (i == 0 or argv[i - 1] not in ("-m", "--module")):
            return argv[:i] + [sys.executable, "-m", "hpplug"] + argv[i + 1:]
    return argv


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
