"""Everything checked in a sweep YAML before any trial starts, one line per fault.

A YAML is untrusted: its shape is checked first (finite numbers, plain JSON types, bounded
size and depth, so that aliases cannot expand without limit), then each setting and each
parameter block with W&B's own definitions (``sweeps``' schema and ``fill_parameter``),
then every value a trial can get through ``hpplug run``'s own option types and plugin
``Param``s, and a grid's size by counting, never by listing its points. W&B's full schema
check and a first suggestion of its engine run last, for whatever is left.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import TYPE_CHECKING, Any

from hpplug.sweep.spec import (EXAMPLE_COMMAND, OWN_OPTIONS, command_plugins, plugin_choices, show,
                               trial_problem, unknown_name, value_checker)

if TYPE_CHECKING:
    from hpplug.sweep.spec import SweepSpec

METHODS = ("grid", "random", "bayes")
KNOWN_METRICS = {"val/accuracy": "maximize", "val/loss": "minimize", "best/val/accuracy": "maximize",
                 "test/accuracy": "maximize", "test/loss": "minimize", "train/loss": "minimize",
                 "train/accuracy": "maximize", "train/samples_per_s": "maximize"}
MAX_GRID_POINTS = 100_000  # W&B's grid code lists every point on every suggestion


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- W&B's definitions ------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    from sweeps.config.schema import sweep_config_jsonschema

    return sweep_config_jsonschema


def _block_vocabulary() -> tuple[set[str], set[str]]:
    """The keys and distribution names W&B's schema allows in a parameter block."""
    keys: set[str] = set()
    distributions: set[str] = set()
    definitions = _schema()["definitions"]
    stack = [definitions[ref["$ref"].split("/")[-1]] for ref in definitions["parameter"]["anyOf"]]
    while stack:
        node = stack.pop()
        stack += node.get("anyOf", [])
        for key, prop in node.get("properties", {}).items():
            keys.add(key)
            if key == "distribution":
                distributions.update(prop.get("enum", []))
    return keys - {"parameters"}, distributions


def wandb_name_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be a sweep's W&B ``project``/``entity`` (W&B's own project-name
    rule) or ``name`` (a display name, but never a path); None when it can."""
    from wandb.sdk.wandb_settings import Settings

    if not isinstance(value, str) or not value.strip():
        return f"{key}: must be a non-empty name, not {show(value)}"
    if key == "name":
        if "/" in value or "\\" in value:
            return f"name: {show(value)} cannot contain / or \\ (W&B addresses a sweep as ENTITY/PROJECT/ID)"
        return None
    try:
        Settings(project=value)
    except Exception as exc:  # W&B's UsageError (or pydantic's wrapper of it)
        reason = str(exc).split(": ", 1)[-1].splitlines()[0]
        return f"{key}: {show(value)} is not a valid W&B name: {reason}"
    return None


# --- settings ---------------------------------------------------------------------------


def _misspelled(raw: dict[str, Any]) -> dict[str, str | None]:
    """Keys that are not sweep settings -> the setting probably meant (or None)."""
    known = list(_schema()["properties"])
    return {key: next(iter(difflib.get_close_matches(key, known, n=1)), None) for key in raw if key not in known}


def _setting_problems(raw: dict[str, Any]) -> list[str]:
    found = []
    misspelled = _misspelled(raw)
    for key, meant in misspelled.items():
        hint = f"did you mean {meant!r}?" if meant else f"W&B's sweep settings are: {', '.join(_schema()['properties'])}"
        found.append(f"{show(key)} is not a sweep setting; {hint}")
    if set(misspelled.values()) & {"method", "metric", "command", "parameters"} - set(raw):
        return found  # "method: missing" and the like would repeat the same fault
    if raw.get("method") not in METHODS:
        found.append(f"method: {show(raw.get('method'))} is not one of {', '.join(METHODS)} "
                     "(custom schedulers run only on the W&B server)")
    metric = raw.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str) or not metric["name"]:
        found.append("metric: missing; tune on val/accuracy (goal: maximize) or val/loss (goal: minimize), which "
                     "hpplug logs every epoch")
    else:
        if metric.get("goal", "minimize") not in ("minimize", "maximize"):
            found.append(f"metric.goal: {show(metric['goal'])} is not minimize or maximize")
        if "target" in metric and not _is_number(metric["target"]):
            found.append(f"metric.target: {show(metric['target'])} is not a number")
    cap = raw.get("run_cap")
    if cap is not None and not (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1):
        found.append(f"run_cap: {show(cap)} is not a whole number of trials >= 1")
    for key in ("project", "entity", "name"):
        if key in raw:
            problem = wandb_name_problem(key, raw[key])
            if problem:
                found.append(problem)
    return found + _command_problems(raw.get("command"))


def _command_problems(command: Any) -> list[str]:
    if not isinstance(command, list) or not command:
        return [f"command: missing; hpplug sweeps need e.g. {EXAMPLE_COMMAND}"]
    if not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in command):
        return ["command: every item must be a word (text), such as " + EXAMPLE_COMMAND]
    words = [str(c) for c in command]
    found = []
    if "${args}" not in words:
        found.append("command: must pass the trial's parameters with ${args} (hpplug run takes --name=value)")
    if "hpplug" not in words:
        found.append(f"command: must run hpplug, e.g. {EXAMPLE_COMMAND} or a launcher such as "
                     '["${env}", torchrun, --nproc_per_node, "2", -m, hpplug, run, "${args}"]')
    for word in words:
        option = word.split("=", 1)[0].lstrip("-").replace("-", "_")
        if word.startswith("--") and option in OWN_OPTIONS:
            found.append(f"command: {word}: hpplug sweep sets --{option.replace('_', '-')} for every trial "
                         "(records go to <sweep dir>/runs); remove it")
    return found


# --- parameters -------------------------------------------------------------------------


def _block_problems(name: str, p: Any) -> tuple[str | None, dict[str, Any] | None]:
    """(problem, None) for a malformed block, else (None, the block as W&B fills it, with
    its ``type``): one line for the first fault found."""
    from sweeps.config import fill_parameter

    where = f"parameters.{name}"
    if not isinstance(p, dict):
        return f"{where}: must be a mapping such as {{values: [...]}} or {{value: x}}, not {show(p)}", None
    if "parameters" in p:
        return (f"{where}: nested parameter blocks are not supported by hpplug run; "
                f"write dotted names such as {name}.<param>"), None
    keys, distributions = _block_vocabulary()
    for key in p:
        if key not in keys:
            close = difflib.get_close_matches(key, sorted(keys), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"a block takes: {', '.join(sorted(keys))}"
            return f"{where}: {show(key)} is not a key of a parameter block; {hint}", None
    if "distribution" in p and p["distribution"] not in distributions:
        return (f"{where}.distribution: {show(p['distribution'])} is not one of W&B's distributions "
                f"({', '.join(sorted(distributions))})"), None
    if "values" in p and (not isinstance(p["values"], list) or not p["values"]):
        return f"{where}.values: must be a non-empty list such as [0.1, 0.2], not {show(p['values'])}", None
    if "value" in p and "values" in p:
        return f"{where}: give value (one) or values (a list), not both", None
    for key in ("min", "max", "mu", "sigma", "q", "a", "b"):
        if key in p and not _is_number(p[key]):
            return f"{where}.{key}: {show(p[key])} is not a number", None
    if "min" in p and "max" in p and not p["min"] < p["max"]:
        return f"{where}: min {p['min']} must be less than max {p['max']}", None
    if "q" in p and p["q"] <= 0:
        return f"{where}.q: {p['q']} must be > 0", None
    if not any(k in p for k in ("value", "values", "min", "max", "distribution")):
        return f"{where}: needs value, values, or a distribution with min and max", None
    try:
        filled = fill_parameter(name, p)
    except Exception as exc:  # W&B's ValueError / ParamValidationError, with its reason
        return f"{where}: {exc}", None
    if filled is None:
        return (f"{where}: {show(p)} is not a parameter block W&B's sweep engine knows "
                "(see https://docs.wandb.ai/guides/sweeps/sweep-config-keys)"), None
    kind, config = filled
    return None, {**config, "type": kind}


def grid_points(block: dict[str, Any]) -> int | None:
    """How many grid points a filled block gives (None: not a grid parameter); counted,
    as W&B's grid code would list them (``range(min, max + 1)``, ``np.arange(min, max, q)``)."""
    kind = block["type"]
    if kind == "param_single_value":
        return 1
    if kind == "param_categorical":
        return len(block["values"])
    if kind == "param_int_uniform":
        return block["max"] - block["min"] + 1
    if kind == "param_quniform":
        return max(0, math.ceil(min((block["max"] - block["min"]) / block["q"], 1e300)))
    return None


def _candidates(block: dict[str, Any]) -> list[Any]:
    """Values a trial can get from a block, as the engine renders them: each listed value,
    or a range's ends (as floats for float distributions, so an int option refuses them)."""
    kind = block["type"]
    if kind == "param_single_value":
        return [block["value"]]
    if kind.startswith("param_categorical"):
        return list(block["values"])
    if kind == "param_int_uniform":
        return [block["min"], block["max"]]
    if kind == "param_quniform" and all(isinstance(block[k], int) for k in ("min", "max", "q")):
        return [block["min"], block["max"]]
    ends = [block.get("min"), block.get("max")]
    if kind in ("param_loguniform", "param_qloguniform"):  # min and max are exponents
        ends = [math.exp(x) if x < 700 else math.inf for x in ends]
    elif kind == "param_inv_loguniform":
        ends = [math.exp(-x) if -x < 700 else math.inf for x in ends]
    elif kind in ("param_normal", "param_qnormal", "param_lognormal", "param_qlognormal",
                  "param_beta", "param_qbeta"):
        return []  # unbounded or in [0, 1]: no ends to check
    return [float(x) for x in ends]


def _parameter_problems(name: str, p: Any, catalog: dict[str, Any], method: Any) -> tuple[list[str], int | None]:
    """Problems of one parameter, and its number of grid points (None: not known)."""
    pattern = _schema()["definitions"]["parameters"]["propertyNames"]["pattern"]
    if not re.match(pattern, name):
        return [f"parameters.{show(name)}: not a W&B parameter name (a letter or _, then letters, "
                "digits, _ . -)"], None
    problem, block = _block_problems(name, p)
    unknown = unknown_name(name, catalog)
    if unknown and (block is not None or not (isinstance(p, dict) and "parameters" in p)):
        return [unknown], None
    if block is None:
        return [problem or f"parameters.{name}: not a parameter block"], None
    points = grid_points(block)
    if method == "grid" and points is None:
        return [f"parameters.{name}: grid search needs values: [...] (or int_uniform/q_uniform), "
                f"not {block.get('distribution', 'a continuous range')}"], None
    if method == "grid" and points == 0:
        return [f"parameters.{name}: gives no grid values from min {block['min']} to max {block['max']}"], None
    check = value_checker(name, catalog)
    found = []
    for value in _candidates(block):
        error = check(value) if check else None
        if error:
            found.append(f"parameters.{name}: {show(value)}: {error}")
    return found[:1], points  # one line per parameter: its first refused value


def grid_size(parameters: dict[str, Any]) -> int | None:
    """The number of points of a grid over these parameter blocks (None: not a grid);
    a product of counts, never a list of points."""
    size = 1
    for name, p in parameters.items():
        _, block = _block_problems(str(name), p)
        points = None if block is None else grid_points(block)
        if points is None:
            return None
        size *= points
    return size


def problems(spec: SweepSpec, catalog: dict[str, Any]) -> list[str]:
    """Everything wrong with a sweep, one line per fault; empty when it can run."""
    raw = spec.raw
    found = _setting_problems(raw)
    parameters = raw.get("parameters")
    if found and "parameters" not in raw:
        return found
    if not isinstance(parameters, dict) or not parameters:
        found.append("parameters: missing; give at least one, e.g. parameters: {lr: {values: [0.01, 0.1]}}")
        return found
    size: int | None = 1
    for name, p in parameters.items():
        more, points = _parameter_problems(name, p, catalog, raw.get("method"))
        found += more
        size = None if size is None or points is None else size * points
    if raw.get("method") == "grid" and size is not None and size > MAX_GRID_POINTS:
        shown = f"{size:,}" if size < 10**18 else f"{float(size):.1e}"
        found.append(f"grid search over {shown} points is more than hpplug sweep runs "
                     f"(at most {MAX_GRID_POINTS:,}): list fewer values, or use method: random")
    found += _selection_problems(raw, catalog)
    if not found:
        found += _wandb_schema_problems(raw)
    if not found:
        found += _engine_problems(raw, catalog)
    return found


def _component_choices(raw: dict[str, Any], kind: str) -> set[str]:
    """The model (or data-set) plugins a sweep's trials can use: its ``model`` parameter's
    values (``timm/resnet18`` counts as ``timm``), else the run's default."""
    from hpplug.config import RunConfig

    block = raw["parameters"].get(kind)
    if isinstance(block, dict):
        values = block.get("values") if isinstance(block.get("values"), list) else [block.get("value")]
    else:
        values = [getattr(RunConfig, kind)]
    return {str(v).partition("/")[0] for v in values if v is not None}


def _selection_problems(raw: dict[str, Any], catalog: dict[str, Any]) -> list[str]:
    """A plugin parameter whose plugin no trial selects."""
    command = raw.get("command")
    try:
        choices = plugin_choices(raw)
    except (TypeError, AttributeError, KeyError):
        return []  # a malformed plugin block: already reported
    fixed = command_plugins(command if isinstance(command, list) else [])
    found = []
    for name in raw["parameters"]:
        plugin = name.partition(".")[0] if "." in name else None
        kind = catalog[plugin].kind_name if plugin in catalog else None
        if kind in ("model", "dataset"):
            if plugin not in _component_choices(raw, kind):
                found.append(f"parameters.{name}: {kind} {plugin!r} is never selected; set `{kind}` to it "
                             f"(value: {plugin}, or values: [{plugin}, ...])")
            continue
        if plugin and plugin in catalog and plugin not in fixed and (
                choices is None or not any(plugin in c for c in choices)):
            found.append(f"parameters.{name}: plugin {plugin!r} is never selected; add it to the "
                         f"`plugin` parameter (values: [[{plugin}, ...]]) or to command")
    return found


def _wandb_schema_problems(raw: dict[str, Any]) -> list[str]:
    import sweeps

    try:
        violations = sweeps.schema_violations_from_proposed_config(raw)
    except Exception as exc:  # W&B's checker failing on a shape it did not expect
        return [f"schema: {exc}"]
    return [f"schema: {v}" for v in dict.fromkeys(violations)]  # W&B reports min >= max twice


def _engine_problems(raw: dict[str, Any], catalog: dict[str, Any]) -> list[str]:
    """Ask W&B's engine for a first suggestion (and a hyperband pass) without any run, and
    check that suggestion as a whole with ``hpplug run``'s own configuration code."""
    import warnings

    import sweeps

    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            first = sweeps.next_run(raw, [], validate=False)
        except Exception as exc:  # whatever the engine cannot run, it cannot run later either
            return [f"{raw.get('method')} search: {type(exc).__name__}: {exc}"]
        if "early_terminate" in raw:
            try:
                sweeps.stop_runs(raw, [], validate=False)
            except Exception as exc:
                found.append(f"early_terminate: {type(exc).__name__}: {exc}")
    if first is not None and not found:
        problem = trial_problem({k: v["value"] for k, v in first.config.items()}, catalog,
                                command_plugins(raw["command"]))
        if problem:
            found.append(f"the first trial W&B's engine suggests would be refused by hpplug run: {problem}")
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
    if name.startswith("test/"):
        out.append(f"metric {name} picks settings on the test set, which is evaluated once, at the end, to "
                   "measure the chosen setting; tune on val/accuracy or val/loss")
    return out
