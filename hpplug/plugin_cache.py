"""The plugin metadata cache: what ``hpplug plugins``, ``hpplug run --help`` and shell
completion show of the installed plugins, without importing them (and torch with them).

:func:`catalog` returns the entries :func:`hpplug.discovery.discover` would, each with its
:class:`PluginInfo` but no class, from ``plugins-<interpreter>.json`` in the user's cache
folder (``HPPLUG_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpplug``, else ``~/.cache/hpplug``).
The file is used only while its key matches: hpplug's version and source files, the
Python, the ``hpplug`` entry points with their distributions' names and versions, the
files (path, size, mtime) of every package an entry point names, found with
``importlib.util.find_spec`` without importing it (an editable install being edited
changes them), the folders on ``sys.path`` (an install or uninstall changes them) and the
autoload switch. Otherwise every plugin is imported and checked as ``discover`` does, and
the file is rewritten atomically. The file is untrusted input: anything that is not
exactly what this module writes (its entries' digest included) is ignored and rebuilt,
never executed and never an error.
A plugin whose metadata would not read back identical (a parameter of another type than
int, float, str, bool or tuple, a default JSON cannot hold) is imported every time.
Running a plugin always imports it: this is for showing, not for training.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpplug import __version__
from hpplug.plugin import Param

CACHE_ENV = "HPPLUG_CACHE_DIR"
FORMAT = 2  # 2: PluginInfo.packable
MAX_BYTES = 8 << 20  # a larger file is not one this module wrote
MAX_FILES = 5000  # files stamped per package: beyond that, its folders' times only
# The parameter types a cached Param can hold, by Param.type_name.
TYPES: dict[str, type] = {t.__name__: t for t in (int, float, str, bool, tuple)}


@dataclass(frozen=True)
class PluginInfo:
    """What listings, help, completion and a sweep's grouping read of a plugin class: its
    kind, slot, variant, hooks, parameters, whether it trains in a pack, and the first
    paragraph of its method card (and the card's path)."""

    kind: str
    slot: str | None
    variant: str | None
    hooks: tuple[str, ...]
    params: dict[str, Param]
    card: str | None
    card_path: str | None
    packable: bool = False

    @classmethod
    def of(cls, plugin: type) -> PluginInfo:
        from hpplug.discovery import hooks_of
        from hpplug.pack.support import packable

        card, path = method_card(plugin)
        return cls(kind=str(plugin.kind), slot=plugin.slot, variant=getattr(plugin, "variant", None),
                   hooks=hooks_of(plugin), params=dict(plugin.params), card=card, card_path=path,
                   packable=packable(plugin))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "slot": self.slot, "variant": self.variant, "hooks": list(self.hooks),
                "params": [param_json(name, p) for name, p in self.params.items()],
                "card": self.card, "card_path": self.card_path, "packable": self.packable}

    @classmethod
    def from_json(cls, data: Any) -> PluginInfo:
        """The inverse of :meth:`to_json`; ``ValueError`` for anything else."""
        _require(isinstance(data, dict) and set(data) == {"kind", "slot", "variant", "hooks", "params", "card",
                                                          "card_path", "packable"})
        _require(isinstance(data["packable"], bool))
        _require(isinstance(data["hooks"], list) and all(isinstance(h, str) for h in data["hooks"]))
        _require(isinstance(data["params"], list))
        params = dict(_param(row) for row in data["params"])
        return cls(kind=_text(data["kind"]), slot=_text(data["slot"], True), variant=_text(data["variant"], True),
                   hooks=tuple(data["hooks"]), params=params, card=_text(data["card"], True),
                   card_path=_text(data["card_path"], True), packable=data["packable"])


def param_json(name: str, p: Param) -> dict[str, Any]:
    """One parameter as data: ``hpplug plugins --json`` shows these fields, the cache stores them."""
    return {"name": name, "type": p.type_name, "default": p.default, "min": p.min, "max": p.max,
            "choices": None if p.choices is None else list(p.choices), "help": p.help}


def _param(row: Any) -> tuple[str, Param]:
    _require(isinstance(row, dict) and set(row) == {"name", "type", "default", "min", "max", "choices", "help"})
    kind = TYPES.get(row["type"]) if isinstance(row["type"], str) else None
    _require(kind is not None and isinstance(row["name"], str) and isinstance(row["help"], str))
    for bound in (row["min"], row["max"]):
        _require(bound is None or (isinstance(bound, (int, float)) and not isinstance(bound, bool)))
    _require(row["choices"] is None or isinstance(row["choices"], list))
    default = tuple(row["default"]) if kind is tuple and isinstance(row["default"], list) else row["default"]
    choices = None if row["choices"] is None else tuple(row["choices"])
    return row["name"], Param(kind, default, row["help"], row["min"], row["max"], choices)


def _text(value: Any, optional: bool = False) -> Any:
    _require(isinstance(value, str) or (optional and value is None))
    return value


def _require(ok: bool) -> None:
    if not ok:
        raise ValueError("not a cache this version of hpplug wrote")


# --- method cards ----------------------------------------------------------------------


def method_card(cls: type) -> tuple[str | None, str | None]:
    """The first paragraph of a plugin's method card and the card's path; else its docstring's."""
    module = sys.modules.get(cls.__module__)
    source = getattr(module, "__file__", None)
    if source and Path(source).name == "__init__.py":  # a plugin of its own folder: plugins/<family>/<pkg>/<method>/
        readme = Path(source).with_name("README.md")
        try:
            text = readme.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        paragraph = first_paragraph(text)
        if paragraph:
            return paragraph, str(readme)
    return first_paragraph(cls.__doc__ or "") or None, None


def first_paragraph(text: str) -> str:
    """The first paragraph of prose, on one line: headings and blank lines before it skipped."""
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            if lines:
                break
            continue
        if stripped.startswith(("|", "```")):  # a table or code: not the prose that says what it does
            if lines:
                break
            continue
        lines.append(stripped)
    return " ".join(lines)


# --- the cache -------------------------------------------------------------------------


def catalog() -> dict[str, Any]:
    """Every plugin as :func:`~hpplug.discovery.discover` lists it, for showing: from the
    cache when it is current (nothing imported), else imported and the cache rewritten."""
    from hpplug import discovery

    by_name = discovery.entry_points()
    key = cache_key(by_name)
    path = cache_file()
    entries = read(path, key, by_name)
    if entries is None:
        entries = {name: discovery.load_entry(name, eps) for name, eps in by_name.items()}
        write(path, key, entries)
    return discovery.with_local(entries)


def cache_file() -> Path:
    """This interpreter's cache file (one per Python, so that two environments do not take turns)."""
    folder = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hpplug")
    return Path(folder) / f"plugins-{_digest([sys.executable, sys.prefix])[:16]}.json"


def cache_key(by_name: dict[str, list[Any]]) -> str:
    """What the cached metadata depends on, as one digest (see the module's docstring)."""
    from hpplug.discovery import third_party_disabled

    eps = sorted((ep.name, ep.value, ep.dist.name if ep.dist else "?", ep.dist.version if ep.dist else "?")
                 for eps in by_name.values() for ep in eps)
    packages = sorted({value.partition(":")[0].partition(".")[0].strip() for _, value, _, _ in eps} | {"hpplug"})
    first = 0 if sys.flags.safe_path else 1  # sys.path[0] is the script's folder or the working folder
    return _digest({"format": FORMAT, "hpplug": __version__, "python": sys.version, "prefix": sys.prefix,
                    "autoload_off": third_party_disabled(), "entry_points": eps,
                    "packages": {name: _package_stamp(name) for name in packages},
                    "path": [(entry, _mtime(entry)) for entry in sys.path[first:]]})


def _package_stamp(name: str) -> list[Any]:
    """Every file of a top-level package (or its one module file), found without importing it."""
    try:
        spec = importlib.util.find_spec(name) if name.isidentifier() else None
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return []
    roots = list(spec.submodule_search_locations or []) or [spec.origin]
    stamp: list[Any] = []
    for root in filter(None, roots):
        if not os.path.isdir(root):
            stamp.append((root, _mtime(root)))
            continue
        count = 0
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
            stamp.append((folder, _mtime(folder)))
            for file in sorted(files) if count < MAX_FILES else ():
                count += 1
                try:
                    info = os.stat(os.path.join(folder, file))
                except OSError:
                    continue
                stamp.append((file, info.st_size, info.st_mtime_ns))
    return stamp


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path or ".").st_mtime_ns
    except OSError:
        return None


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def read(path: Path, key: str, by_name: dict[str, list[Any]]) -> dict[str, Any] | None:
    """The cached entries when ``path`` holds them for ``key``; None for a missing, foreign,
    stale or damaged file. A plugin the cache could not hold is imported here."""
    from hpplug import discovery

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        _require(len(raw) <= MAX_BYTES)
        data = json.loads(raw.decode("utf-8"))
        if not (isinstance(data, dict) and data.get("format") == FORMAT and data.get("key") == key):
            return None
        rows = data["entries"]
        _require(data.get("check") == _digest([key, rows]))  # an edit or a torn copy, not only a stale key
        _require(isinstance(rows, list) and all(isinstance(row, dict) for row in rows))
        entries = {}
        for row in rows:
            name = _text(row.get("name"))
            _require(name in by_name and name not in entries)
            if row.get("import") is True:
                entries[name] = discovery.load_entry(name, by_name[name])
                continue
            _require(set(row) == {"name", "distribution", "version", "target", "error", "disabled", "info"}
                     and isinstance(row["disabled"], bool))
            info = None if row["info"] is None else PluginInfo.from_json(row["info"])
            entries[name] = discovery.PluginEntry(name, _text(row["distribution"]), _text(row["version"]),
                                                  _text(row["target"]), error=_text(row["error"], True),
                                                  disabled=row["disabled"], cached=info)
        _require(set(entries) == set(by_name))
        return entries
    except (OSError, ValueError, TypeError, KeyError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def write(path: Path, key: str, entries: dict[str, Any]) -> None:
    """Store ``entries`` for ``key``; a cache that cannot be written is only slower next time."""
    from hpplug.atomic import write_atomic

    rows = [_row(entry) for entry in entries.values()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"format": FORMAT, "key": key, "check": _digest([key, rows]), "entries": rows},
                                      indent=1))
    except (OSError, ValueError, TypeError):
        pass


def _row(entry: Any) -> dict[str, Any]:
    """An entry as the cache holds it, or ``{"name", "import": true}`` when its metadata would
    not read back identical (then it is imported each time, as without a cache)."""
    info = entry.info
    row = {"name": entry.name, "distribution": entry.distribution, "version": entry.version, "target": entry.target,
           "error": entry.error, "disabled": entry.disabled, "info": None if info is None else info.to_json()}
    try:
        same = info is None or PluginInfo.from_json(json.loads(json.dumps(row["info"]))) == info
    except (ValueError, TypeError, RecursionError):
        same = False
    return row if same else {"name": entry.name, "import": True}
