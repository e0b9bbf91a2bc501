"""Run configuration files: ``hpplug run --config FILE`` and ``--print-config``.

A file is YAML (or JSON, e.g. a run record's own ``config.json``): the core options by
their names (``batch_size`` or ``batch-size``), ``plugins``, and each plugin's parameters
as a section (``cosine: {eta_min: 0.001}``) or flat keys (``cosine.eta_min``, as W&B and
``config.json`` hold them). The command line overrides the file, the file the defaults.

A file is untrusted input: parsed with ``yaml.safe_load`` (never constructs objects, never
runs code), at most 1 MiB, and anything wrong with it (not YAML, an unknown key, a value of
the wrong type) is one line that names the file and the key. ``--print-config`` writes the
resolved configuration, every plugin parameter included, in the form this module loads.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import click
import yaml

from hpplug import __version__
from hpplug.config import OPTION_TYPES, RunConfig, option_groups
from hpplug.errors import HpplugError
from hpplug.suggest import hint

MAX_BYTES = 1 << 20
MAX_TEXT = 1000  # characters in one value: a path, a name
# What a run record's config.json holds beyond the options: facts about the run, not settings.
RECORD_ONLY = frozenset({"versions", "plugin_versions", "num_processes", "effective_lr", "global_batch_size"})
PLUGINS_KEYS = ("plugins", "plugin")  # ``plugin`` is what a sweep's W&B config names it
RECORD_FILE = "config.json"
_DEFAULTS = RunConfig()


@dataclass
class Layer:
    """What one file sets: converted core options, the plugin list, each plugin's values."""

    path: str
    core: dict[str, Any] = field(default_factory=dict)
    plugins: list[str] | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- reading --------------------------------------------------------------------------


def read(path: str | Path) -> dict[str, Any]:
    """The mapping in ``path`` (a run record's folder means its config.json); one line on any problem."""
    target = Path(path)
    if target.is_dir() and (target / RECORD_FILE).is_file():
        target = target / RECORD_FILE
    try:
        with open(target, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise HpplugError(f"--config {path}: no such file; give a YAML file or a run's config.json") from None
    except IsADirectoryError:
        raise HpplugError(f"--config {path}: a folder without {RECORD_FILE}; give a YAML file or a run "
                          "record's folder") from None
    except OSError as exc:
        raise HpplugError(f"--config {path}: cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise HpplugError(f"--config {path}: larger than {MAX_BYTES // 1024} KiB; a run configuration is a few lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HpplugError(f"--config {path}: not a text file (not UTF-8); give a YAML file") from None
    data = _parse(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HpplugError(f"--config {path}: holds a {_kind(data)}; expected a mapping of option: value lines "
                          "(see hpplug run --print-config)")
    return data


def _parse(text: str, path: str) -> Any:
    if text.lstrip().startswith("{"):  # JSON (a run's config.json) read exactly, as JSON
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass  # a YAML flow mapping, or broken: YAML says where
    try:
        return yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - the safe loader: builds plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise HpplugError(f"--config {path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise HpplugError(f"--config {path}: nested too deeply to be a run configuration") from None


def _kind(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"{'mapping' if isinstance(value, dict) else 'list'} of {len(value)} items"
    return type(value).__name__


def split(data: dict[str, Any], path: str, plugin_names: Sequence[str] = ()) -> Layer:
    """Sort a file's keys into core options, the plugin list and plugin sections (unchecked values)."""
    layer = Layer(path)
    for key, value in data.items():
        if not isinstance(key, str):
            raise HpplugError(f"--config {path}: the key {_short(key)} is not a name; keys are option names "
                              "such as epochs, plugins or cosine")
        core = key.replace("-", "_")
        if key in RECORD_ONLY:
            continue
        if key in PLUGINS_KEYS:
            layer.plugins = _plugin_list(value, path, key)
        elif core in OPTION_TYPES:
            layer.core[core] = value
        elif "." in key:
            plugin, param = key.split(".", 1)
            layer.params.setdefault(plugin, {})[param] = value
        elif isinstance(value, dict):
            section = layer.params.setdefault(key, {})
            for param, item in value.items():
                if not isinstance(param, str):
                    raise HpplugError(f"--config {path}: {key}: the key {_short(param)} is not a parameter name")
                section[param] = item
        else:
            known = [*OPTION_TYPES, "plugins", *plugin_names]
            hint_text = hint(key, known)
            raise HpplugError(f"--config {path}: unknown key {key!r}; {hint_text or ''}keys are the options of "
                              "hpplug run (epochs, batch_size, ...), plugins, and a section per plugin")
    return layer


def _plugin_list(value: Any, path: str, key: str) -> list[str]:
    if isinstance(value, str):
        from hpplug.run_args import split_plugin_names

        return split_plugin_names((value,))
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HpplugError(f"--config {path}: {key}: a {_kind(value)}; expected a list of plugin names "
                          "such as [cosine, dropout]")
    return list(value)


def _short(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"(a {_kind(value)})"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar(value: Any, path: str, key: str, items: bool = False) -> None:
    """Refuse a value that cannot be an option's (never printing a large one in full)."""
    if items and isinstance(value, list):
        for item in value:
            _scalar(item, path, key)
        return
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise HpplugError(f"--config {path}: {key}: a {len(value)}-character text; expected a short value")
    if not (value is None or isinstance(value, (str, bool, numbers.Real))):
        raise HpplugError(f"--config {path}: {key}: a {_kind(value)}; expected a single value")


def load(path: str | Path, catalog: dict[str, Any]) -> Layer:
    """Read and check ``path`` against the installed plugins: every key known, every value
    of the right type and in range (plugin parameters by their own ``Param``)."""
    layer = split(read(path), str(path), sorted(catalog))
    for key, value in list(layer.core.items()):
        layer.core[key] = convert(key, value, str(path))
    for name in layer.plugins or []:
        if name not in catalog:
            raise HpplugError(f"--config {path}: plugins: unknown plugin {name!r}; "
                              f"{hint(name, catalog) or 'see `hpplug plugins`'}".rstrip("; "))
    for plugin, values in layer.params.items():
        entry = catalog.get(plugin)
        if entry is None:
            raise HpplugError(f"--config {path}: unknown key {plugin!r}: no plugin of that name; "
                              f"{hint(plugin, catalog) or 'see `hpplug plugins`'}".rstrip("; "))
        if not entry.active:
            raise HpplugError(f"--config {path}: {plugin}: the plugin cannot be used: "
                              f"{entry.error or 'third-party plugins are off (HPPLUG_DISABLE_PLUGIN_AUTOLOAD)'}")
        for param, value in values.items():
            declared = entry.params.get(param)
            if declared is None:
                takes = ", ".join(entry.params) or "no parameters"
                raise HpplugError(f"--config {path}: {plugin}.{param}: unknown parameter; "
                                  f"{hint(param, entry.params)}{plugin} takes: {takes}")
            _scalar(value, str(path), f"{plugin}.{param}", items=declared.type is tuple)
            try:
                values[param] = declared.parse(value)
            except ValueError as exc:
                raise HpplugError(f"--config {path}: {plugin}.{param}: {exc}") from None
    return layer


def convert(key: str, value: Any, path: str) -> Any:
    """A core option's value from a file, through the option's one type."""
    _scalar(value, path, key)
    ctype = OPTION_TYPES[key]
    if value is None:
        if getattr(_DEFAULTS, key) is not None:
            raise HpplugError(f"--config {path}: {key}: empty; give a value (type: {ctype.name}) or leave the key out")
        return None
    if isinstance(value, bool) and isinstance(ctype, click.Choice) and not value and "no" in ctype.choices:
        value = "no"  # YAML 1.1 reads an unquoted `no` as false
    try:
        return ctype.convert(value, None, None)
    except click.BadParameter as exc:
        raise HpplugError(f"--config {path}: {key}: {exc.message}") from None


# --- merging with the command line ----------------------------------------------------


def _plugin_of(spec: Any) -> str:
    """The plugin a --model/--dataset value selects: ``timm/resnet18`` -> ``timm``."""
    return str(spec).partition("/")[0]


def merge(layer: Layer, catalog: dict[str, Any], core: dict[str, Any], given: set[str],
          plugins: list[str] | None, raw: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any],
                                                                              dict[str, dict[str, Any]]]:
    """Defaults < file < command line: ``core`` holds every option (defaults and the ``given``
    ones), ``plugins`` the --plugin names (None: not given), ``raw`` the --<plugin>.<param> values.

    A --plugin list replaces the file's; the file's parameters of a plugin that the command
    line no longer selects are dropped, and so is the architecture a file's --model implies
    when the command line names another."""
    merged = {**core, **{k: v for k, v in layer.core.items() if k not in given}}
    names = plugins if plugins is not None else list(layer.plugins or [])
    kinds = ("model", "dataset")
    file_selects = set(layer.plugins or []) | {_plugin_of(layer.core.get(k, getattr(_DEFAULTS, k))) for k in kinds}
    selected = set(names) | {_plugin_of(merged[k]) for k in kinds}
    params: dict[str, dict[str, Any]] = {}
    for plugin, values in layer.params.items():
        if plugin in selected:
            params[plugin] = dict(values)
        elif plugin not in file_selects:
            raise HpplugError(f"--config {layer.path}: {plugin}: parameters of plugin {plugin}, which the file "
                              f"does not select; add it to plugins: (or model:/dataset:), or remove the section")
    for kind in kinds:  # --model timm/convnext over a file's timm/resnet18: the file's arch goes
        spec, plugin = merged[kind], _plugin_of(merged[kind])
        entry = catalog.get(plugin)
        variant = entry.variant if entry is not None else None
        if kind in given and variant and plugin in params and spec != layer.core.get(kind):
            params[plugin].pop(variant, None)
    for plugin, values in raw.items():
        params.setdefault(plugin, {}).update(values)
    return names, merged, params


# --- writing --------------------------------------------------------------------------


class _Flow(list):
    """A list written on one line: ``plugins: [cosine, dropout]``."""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # two parameters with the same default tuple: written twice, not as &id001/*id001


_Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return _Flow(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _block(mapping: dict[str, Any]) -> str:
    return yaml.dump(_plain(mapping), Dumper=_Dumper, default_flow_style=False,
                     sort_keys=False, allow_unicode=True, width=10**6)


def render(core: dict[str, Any], plugins: list[str], params: dict[str, dict[str, Any]]) -> str:
    """The YAML ``--config`` loads: the core options by group, then the plugins and each one's
    parameters (model and data set included)."""
    parts = [f"# hpplug {__version__} run configuration: hpplug run --config FILE (options given on "
             "the command line override it)\n"]
    for title, names in option_groups().items():
        present = {n: core[n] for n in names if n in core}
        if present:
            parts.append(f"# {title}\n{_block(present)}")
    parts.append("# Plugins, and the parameters of every plugin, the model and the data set\n"
                 + _block({"plugins": list(plugins)}))
    for plugin, values in params.items():
        parts.append(_block({plugin: dict(values)}) if values else f"{plugin}: {{}}\n")
    return "".join(parts)


def dump(config: RunConfig) -> str:
    """A resolved configuration as YAML; ``--config`` loads it back to the same configuration."""
    core = {name: getattr(config, name) for name in OPTION_TYPES if hasattr(config, name)}
    return render(core, config.plugins, config.plugin_params)


def from_record(data: dict[str, Any], path: str) -> str:
    """A run record's ``config.json`` as the YAML ``--config`` loads (the best trial of a sweep)."""
    layer = split(data, path)
    return render(layer.core, layer.plugins or [], layer.params)
