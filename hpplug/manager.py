"""Plugin discovery through entry points, selection by name, and slot conflicts.

Entry points are listed without importing them, so a package that fails to import still
shows in ``hpplug plugins`` with its error and never takes the CLI down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from hpplug import __version__, hookspecs
from hpplug.errors import HpplugError
from hpplug.plugin import Plugin

GROUP = "hpplug"
BUILTIN_DISTRIBUTIONS = frozenset(
    {"hpplug-schedulers", "hpplug-regularizers", "hpplug-augment", "hpplug-batch"}
)
DISABLE_AUTOLOAD_ENV = "HPPLUG_DISABLE_PLUGIN_AUTOLOAD"
LOCAL_DISTRIBUTION = "<in-process>"

# Plugins registered in-process (tests, notebooks) by ``register_local``: name -> class.
_local: dict[str, type[Plugin]] = {}


def register_local(name: str, cls: type[Plugin]) -> None:
    """Make ``cls`` available as plugin ``name`` without an installed package."""
    _local[name] = cls


def unregister_local(name: str) -> None:
    _local.pop(name, None)


@dataclass
class PluginEntry:
    """One installed plugin: where it comes from, its class, or why it failed to load."""

    name: str
    distribution: str
    version: str
    target: str
    cls: type[Plugin] | None = None
    error: str | None = None
    also_in: list[str] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.distribution in BUILTIN_DISTRIBUTIONS

    @property
    def kind_name(self) -> str:
        return self.cls.kind if self.cls is not None else "?"

    @property
    def hooks(self) -> list[str]:
        if self.cls is None:
            return []
        return sorted(n for n in dir(self.cls) if n.startswith("hpplug_"))


def third_party_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false")


def discover() -> dict[str, PluginEntry]:
    """Every plugin entry point installed, loaded and checked, keyed by plugin name."""
    entries: dict[str, PluginEntry] = {}
    for ep in metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if third_party_disabled() and dist not in BUILTIN_DISTRIBUTIONS:
            continue
        if ep.name in entries:
            entries[ep.name].also_in.append(dist)
            continue
        entry = PluginEntry(ep.name, dist, version, ep.value)
        entries[ep.name] = entry
        try:
            entry.cls = _load(ep)
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin import is reported
            entry.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    for name, cls in _local.items():
        entry = PluginEntry(name, LOCAL_DISTRIBUTION, __version__, f"{cls.__module__}:{cls.__qualname__}")
        entries[name] = entry
        try:
            _check_version(cls)
            _check_hooks(name, cls)
            entry.cls = cls
        except Exception as exc:  # noqa: BLE001
            entry.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    for entry in entries.values():
        if entry.also_in and entry.error is None:
            dists = ", ".join([entry.distribution, *entry.also_in])
            entry.error = f"plugin name {entry.name!r} is registered by several distributions: {dists}"
    return entries


def _load(ep: metadata.EntryPoint) -> type[Plugin]:
    obj = ep.load()
    if not (isinstance(obj, type) and issubclass(obj, Plugin)):
        raise TypeError(f"{ep.value} is not a subclass of hpplug.Plugin")
    _check_version(obj)
    _check_hooks(ep.name, obj)
    return obj


def _check_version(cls: type[Plugin]) -> None:
    if not cls.requires_hpplug:
        return
    try:
        spec = SpecifierSet(cls.requires_hpplug)
    except InvalidSpecifier:
        raise TypeError(f"requires_hpplug {cls.requires_hpplug!r} is not a version specifier") from None
    if __version__ not in spec:
        raise RuntimeError(
            f"needs hpplug{cls.requires_hpplug}, but hpplug {__version__} is installed: "
            "upgrade hpplug or pin an older release of the plugin"
        )


def _check_hooks(name: str, cls: type[Plugin]) -> None:
    """Reject hook implementations whose names match no hookspec (typos)."""
    pm = new_plugin_manager()
    try:
        pm.register(cls(), name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise TypeError(str(exc).splitlines()[0]) from None


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("hpplug")
    pm.add_hookspecs(hookspecs)
    return pm


def resolve(catalog: dict[str, PluginEntry], names: list[str]) -> list[PluginEntry]:
    """The entries for ``names``, or an error naming the problem and what is available."""
    chosen = []
    for name in names:
        entry = catalog.get(name)
        if entry is None:
            available = ", ".join(sorted(n for n, e in catalog.items() if e.error is None))
            raise HpplugError(f"unknown plugin {name!r}; installed plugins: {available or 'none'}")
        if entry.error:
            raise HpplugError(f"plugin {name!r} ({entry.distribution}) cannot be used: {entry.error}")
        if entry in chosen:
            raise HpplugError(f"plugin {name!r} is named twice")
        chosen.append(entry)
    check_slots(chosen)
    return chosen


def check_slots(entries: list[PluginEntry]) -> None:
    """Two plugins in one slot are an error unless all but one declare they compose."""
    by_slot: dict[str, list[PluginEntry]] = {}
    for entry in entries:
        if entry.cls is not None and entry.cls.slot:
            by_slot.setdefault(entry.cls.slot, []).append(entry)
    for slot, claimants in by_slot.items():
        exclusive = [e.name for e in claimants if not e.cls.composable]
        if len(exclusive) > 1:
            raise HpplugError(
                f"plugins {', '.join(exclusive)} all claim the {slot} slot and do not compose: "
                "choose one of them"
            )


def build(entries: list[PluginEntry], values: dict[str, dict[str, Any]]) -> tuple[pluggy.PluginManager, list[Plugin]]:
    """Instantiate the chosen plugins with validated values and register them in order."""
    pm = new_plugin_manager()
    plugins = [entry.cls(**values.get(entry.name, {})) for entry in entries]
    # pluggy calls the last registered first: register in reverse so hooks run in CLI order.
    for entry, plugin in reversed(list(zip(entries, plugins))):
        pm.register(plugin, name=entry.name)
    return pm, plugins


def parse_values(entries: list[PluginEntry], raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate ``{plugin: {param: raw value}}``; every selected plugin gets every parameter."""
    by_name = {e.name: e for e in entries}
    for plugin in raw:
        if plugin not in by_name:
            raise HpplugError(
                f"parameters given for plugin {plugin!r}, which is not selected: add --plugin {plugin}"
            )
    values: dict[str, dict[str, Any]] = {}
    for entry in entries:
        declared = entry.cls.params
        given = raw.get(entry.name, {})
        for key in given:
            if key not in declared:
                known = ", ".join(f"--{entry.name}.{k}" for k in declared) or "none"
                raise HpplugError(f"unknown parameter --{entry.name}.{key}; {entry.name} takes: {known}")
        values[entry.name] = {}
        for key, param in declared.items():
            try:
                values[entry.name][key] = param.parse(given.get(key))
            except ValueError as exc:
                raise HpplugError(f"--{entry.name}.{key}: {exc}") from None
    return values
