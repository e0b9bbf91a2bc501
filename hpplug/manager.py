"""Building a run's pluggy ``PluginManager``: :func:`resolve` the ``--plugin`` names and
check their slots, :func:`parse_values` their parameters, :func:`build` and register them in
command-line order. Every failure is a one-line :class:`~hpplug.errors.HpplugError`.

Finding and checking installed plugins is :mod:`hpplug.discovery`; its public names are
re-exported here, so ``manager.discover`` and the like keep working.
"""

from __future__ import annotations

import functools
from typing import Any

import pluggy

from hpplug import hookspecs
from hpplug.discovery import (BUILTIN_DISTRIBUTIONS, DISABLE_AUTOLOAD_ENV, GROUP, HOOKS, LOCAL_DISTRIBUTION,
                              NAME_PATTERN, PluginEntry, check_class, discover, first_result_hooks, register_local,
                              third_party_disabled, unregister_local)
from hpplug.errors import HpplugError
from hpplug.plugin import Plugin
from hpplug.suggest import hint

__all__ = [
    "new_plugin_manager", "resolve", "check_slots", "build", "parse_values",
    # re-exported from hpplug.discovery
    "BUILTIN_DISTRIBUTIONS", "DISABLE_AUTOLOAD_ENV", "GROUP", "HOOKS", "LOCAL_DISTRIBUTION", "NAME_PATTERN",
    "PluginEntry", "check_class", "discover", "register_local", "third_party_disabled", "unregister_local",
]


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
            available = sorted(n for n, e in catalog.items() if e.active and e.kind_name not in ("model", "dataset"))
            raise HpplugError(f"unknown plugin {name!r}; {hint(name, available)}"
                              f"installed plugins: {', '.join(available) or 'none'} "
                              "(models and data sets: --model, --dataset)")
        if entry.disabled:
            raise HpplugError(f"plugin {name!r} ({entry.distribution}) is not loaded because "
                              f"{DISABLE_AUTOLOAD_ENV} is set: unset it to use third-party plugins")
        if not entry.active:
            raise HpplugError(f"plugin {name!r} ({entry.distribution} {entry.version}) cannot be used: {entry.error}")
        if entry.kind_name in ("model", "dataset"):
            raise HpplugError(f"{name!r} is a {entry.kind_name}, one per run: pick it with --{entry.kind_name} {name}, "
                              "not --plugin")
        if entry in chosen:
            raise HpplugError(f"plugin {name!r} is named twice")
        chosen.append(entry)
    check_slots(chosen)
    return chosen


def check_slots(entries: list[PluginEntry]) -> None:
    """Two plugins in one slot, or answering one first-result hook (where only one answer
    would count, silently), are an error unless all but one declare they compose."""
    claims: dict[str, list[PluginEntry]] = {}
    for entry in entries:
        if entry.cls is None:
            continue
        if entry.cls.slot:
            claims.setdefault(f"the {entry.cls.slot} slot", []).append(entry)
        for hook in first_result_hooks(entry.cls):
            claims.setdefault(hook, []).append(entry)
    for what, claimants in claims.items():
        exclusive = [e.name for e in claimants if not e.cls.composable]
        if len(exclusive) > 1:
            kind = f"all implement {what}, where the first result wins," if what.startswith("hpplug_") else \
                f"all claim {what}"
            raise HpplugError(f"plugins {', '.join(exclusive)} {kind} and do not compose: choose one of them "
                              "(a plugin that composes declares composable = True)")


def build(entries: list[PluginEntry],
          values: dict[str, dict[str, Any]]) -> tuple[pluggy.PluginManager, dict[str, Plugin]]:
    """Instantiate the chosen plugins with validated values and register them in order;
    returns them by name (what their checkpointed state is keyed by).

    Every hook implementation is guarded (:mod:`hpplug.guard`): whatever a plugin raises or
    wrongly returns, at any call site, becomes a PluginError naming the plugin and the hook.
    """
    from hpplug.guard import guard, run_guarded  # imports torch: only to build a run

    check_slots(entries)  # the model's and the data set's hooks too
    pm = new_plugin_manager()
    plugins = [run_guarded(functools.partial(entry.cls, **values.get(entry.name, {})), (), entry.name, "__init__")
               for entry in entries]
    # pluggy calls the last registered first: register in reverse so hooks run in CLI order.
    for entry, plugin in reversed(list(zip(entries, plugins))):
        pm.register(plugin, name=entry.name)
        guard(pm, plugin, entry.name)
    return pm, {entry.name: plugin for entry, plugin in zip(entries, plugins)}


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
        declared = entry.params
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
