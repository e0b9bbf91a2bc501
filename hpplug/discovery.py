"""Finding and checking installed plugins.

The entry points of group ``hpplug`` are listed *before* anything is imported; then each
plugin is imported and checked on its own, and whatever goes wrong becomes a one-line
``error`` on its :class:`PluginEntry`, never an exception. So a broken package shows up in
``hpplug plugins`` with its error and never takes the CLI (or anyone's run) down.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Iterator

import pluggy
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from hpplug import __version__, hookspecs
from hpplug.errors import HpplugError, one_line
from hpplug.plugin import Param, Plugin

if TYPE_CHECKING:
    from hpplug.plugin_cache import PluginInfo

GROUP = "hpplug"
BUILTIN_DISTRIBUTIONS = frozenset(
    {"hpplug-schedulers", "hpplug-regularizers", "hpplug-augment", "hpplug-batch", "hpplug-models",
     "hpplug-datasets", "hpplug-methods"}
)
DISABLE_AUTOLOAD_ENV = "HPPLUG_DISABLE_PLUGIN_AUTOLOAD"
LOCAL_DISTRIBUTION = "<in-process>"
# Plugin names go on the command line (--plugin NAME, --NAME.param), into W&B keys and folder
# names (hpplug new-plugin): never a path separator, a dot or an over-long file name.
NAME_PATTERN = re.compile(r"^(?=.{1,64}$)[a-z][a-z0-9]*(-[a-z0-9]+)*$")
NAME_RULE = "use lowercase letters, digits and hyphens, starting with a letter, at most 64 characters"
# Every hook hpplug calls: name -> the arguments it passes.
HOOKS = {
    name: tuple(inspect.signature(spec).parameters)
    for name, spec in vars(hookspecs).items()
    if name.startswith("hpplug_") and hasattr(spec, "hpplug_spec")
}

FIRST_RESULT = frozenset(name for name in HOOKS if getattr(hookspecs, name).hpplug_spec["firstresult"])

# Plugins registered in-process (tests, notebooks) by ``register_local``: name -> class.
_local: dict[str, type[Plugin]] = {}


@dataclass
class PluginEntry:
    """One plugin name: where it comes from, and its class or why it cannot be used.

    ``status`` is ``active`` (loaded and checked, or known so from the metadata cache:
    usable), ``disabled`` (not imported because third-party autoload is off) or ``error``
    (``error`` says why, in one line). ``info`` is what listings, help and completion
    show; it comes from ``cls``, or from :mod:`hpplug.plugin_cache` when the class was
    not imported (then ``cls`` is None and the entry is for showing, not for running).
    """

    name: str
    distribution: str
    version: str
    target: str  # "module:Class", as the entry point names it
    cls: type[Plugin] | None = None  # set only when every check passed
    error: str | None = None
    disabled: bool = False
    cached: PluginInfo | None = field(default=None, repr=False)  # info read from the cache, or derived once from cls

    @property
    def info(self) -> PluginInfo | None:
        if self.cached is None and self.cls is not None:
            from hpplug.plugin_cache import PluginInfo

            self.cached = PluginInfo.of(self.cls)
        return self.cached

    @property
    def status(self) -> str:
        if self.disabled:
            return "disabled"
        return "active" if (self.cls is not None or self.cached is not None) and self.error is None else "error"

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def builtin(self) -> bool:
        return self.distribution in BUILTIN_DISTRIBUTIONS

    @property
    def kind_name(self) -> str:
        info = self.info
        return info.kind if info is not None else "?"

    @property
    def hooks(self) -> list[str]:
        info = self.info
        return list(info.hooks) if info is not None else []

    @property
    def params(self) -> dict[str, Param]:
        """The declared parameters (none for a plugin that cannot be used): from the class,
        or from the metadata cache, so that a run's options are read without importing it."""
        info = self.info
        return info.params if info is not None else {}

    @property
    def variant(self) -> str | None:
        """The parameter ``--model NAME/VARIANT`` sets, if the plugin has variants."""
        info = self.info
        return info.variant if info is not None else None


def third_party_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


# --- discovery ------------------------------------------------------------------------


def discover() -> dict[str, PluginEntry]:
    """Every plugin installed or registered in-process, keyed by plugin name, each imported
    and checked; never raises. (Listings and help read :func:`hpplug.plugin_cache.catalog`.)"""
    return with_local({name: load_entry(name, eps) for name, eps in entry_points().items()})


def entry_points() -> dict[str, list[metadata.EntryPoint]]:
    """The installed entry points of group ``hpplug`` by plugin name; nothing is imported."""
    by_name: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=GROUP):
        by_name.setdefault(ep.name, []).append(ep)
    return by_name


def with_local(entries: dict[str, PluginEntry]) -> dict[str, PluginEntry]:
    """``entries`` with the in-process registrations, which win over installed packages: a
    package's own tests use the class in its source tree even while an older release is installed."""
    for name, cls in _local.items():
        entries[name] = PluginEntry(name, LOCAL_DISTRIBUTION, __version__, _target(cls), cls=cls)
    return entries


def load_entry(name: str, eps: list[metadata.EntryPoint]) -> PluginEntry:
    """Check what can be checked before importing (name, duplicates), then import and check."""
    if third_party_disabled():  # a built-in keeps its name even if a disabled package reuses it
        eps = [ep for ep in eps if _dist_name(ep) in BUILTIN_DISTRIBUTIONS] or eps
    eps = sorted(eps, key=_dist_name)
    ep = eps[0]
    entry = PluginEntry(name, _dist_name(ep), ep.dist.version if ep.dist else "?", ep.value)
    if third_party_disabled() and not entry.builtin:
        entry.disabled = True
    elif not NAME_PATTERN.match(name):
        entry.error = f"{name[:80]!r} is not a valid plugin name: {NAME_RULE}"
    elif len(eps) > 1:
        dists = " and ".join(_dist_name(e) for e in eps)
        entry.error = f"{len(eps)} distributions register a plugin named {name!r}: {dists}; uninstall all but one"
    else:
        try:
            entry.cls = _import_checked(ep)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, never raised
            entry.error = one_line(exc)
    return entry


def _import_checked(ep: metadata.EntryPoint) -> type[Plugin]:
    _check_requirement(ep.dist)  # first: a plugin made for another hpplug is not even imported
    with _stdout_to_stderr():
        try:
            cls = ep.load()
        except (Exception, SystemExit) as exc:  # anything a plugin's import can raise
            raise HpplugError(f"import of {ep.value} failed: {one_line(exc)}") from None
        check_class(cls)
    return cls


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """What a plugin prints while it is imported goes to stderr (``print``, ``sys.__stdout__``,
    a subprocess it starts): stdout may be ``hpplug plugins --json``."""
    streams = [s for s in (sys.stdout, sys.__stdout__) if s is not None]
    for stream in streams:
        stream.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptors (an embedded interpreter): Python's own stdout only
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for stream in streams:
            stream.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _dist_name(ep: metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist else "?"


def _target(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# --- checks: each raises HpplugError with a message that says what would be right -----


def _check_requirement(dist: metadata.Distribution | None) -> None:
    """The ``hpplug`` version the distribution's own metadata asks for (``Requires-Dist``)."""
    for line in (dist.requires or []) if dist else []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) != "hpplug" or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        if not req.specifier.contains(__version__, prereleases=True):
            raise HpplugError(f"{dist.name} {dist.version} needs hpplug{req.specifier}, but hpplug {__version__} "
                              f"is installed: upgrade hpplug (pip install -U hpplug) or install an older {dist.name}")


def check_class(cls: Any) -> None:
    """Everything hpplug can check about a plugin class without running it."""
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise HpplugError(f"{getattr(cls, '__qualname__', repr(cls))} is not a subclass of hpplug.Plugin")
    _check_requires_hpplug(cls)
    _check_params(cls)
    _check_hooks(cls)


def _check_requires_hpplug(cls: type[Plugin]) -> None:
    if not cls.requires_hpplug:
        return
    try:
        ok = SpecifierSet(cls.requires_hpplug).contains(__version__, prereleases=True)
    except InvalidSpecifier:
        raise HpplugError(f"{cls.__name__}.requires_hpplug {cls.requires_hpplug!r} is not a version "
                          "specifier such as '>=0.1'") from None
    if not ok:
        raise HpplugError(f"{cls.__name__} needs hpplug{cls.requires_hpplug} (requires_hpplug), but hpplug "
                          f"{__version__} is installed: upgrade hpplug (pip install -U hpplug) or install an "
                          "older release of the plugin")


def _check_params(cls: type[Plugin]) -> None:
    if not isinstance(cls.params, dict):
        raise HpplugError(f"{cls.__name__}.params must be a dict of name -> hpplug.Param")
    for key, param in cls.params.items():
        if not (isinstance(key, str) and key.isidentifier()):
            raise HpplugError(f"{cls.__name__}.params: {key!r} is not a valid parameter name (a Python identifier)")
        if not isinstance(param, Param):
            raise HpplugError(f"{cls.__name__}.params[{key!r}] is a {type(param).__name__}, not an hpplug.Param")
        try:
            param.parse(param.default)
        except (TypeError, ValueError) as exc:
            raise HpplugError(f"{cls.__name__}.params[{key!r}]: the default {param.default!r} is invalid: {exc}") from None


def _implementations(cls: type, wrappers: bool = True) -> dict[str, str]:
    """``{method name: hook name}`` for every method marked ``@hookimpl`` (without hook
    wrappers when ``wrappers`` is False)."""
    parser = pluggy.PluginManager("hpplug")
    found = {}
    for attr in dir(cls):
        opts = parser.parse_hookimpl_opts(cls, attr)
        if opts is not None and (wrappers or not (opts.get("wrapper") or opts.get("hookwrapper"))):
            found[attr] = opts.get("specname") or attr
    return found


@functools.lru_cache(maxsize=None)
def hooks_of(cls: type) -> tuple[str, ...]:
    """The hooks ``cls`` implements, sorted (cached: a class's markers do not change)."""
    return tuple(sorted(set(_implementations(cls).values())))


def first_result_hooks(cls: type) -> list[str]:
    """The first-result hooks ``cls`` answers (hook wrappers aside: they compose by design)."""
    return sorted(h for h in set(_implementations(cls, wrappers=False).values()) if h in FIRST_RESULT)


def _check_hooks(cls: type[Plugin]) -> None:
    """Catch the usual mistakes: a misspelled hook, a forgotten marker, a wrong argument."""
    impls = _implementations(cls)
    for attr in dir(cls):
        if attr.startswith("hpplug_") and attr not in impls and callable(getattr(cls, attr)):
            raise HpplugError(f"{cls.__name__}.{attr} is not marked @hpplug.hookimpl, so it would never be called")
    for attr, hook in impls.items():
        if hook not in HOOKS:
            close = difflib.get_close_matches(hook, HOOKS, n=1)
            hint = f"did you mean {close[0]}?" if close else "the hooks are listed in docs/plugins.md"
            raise HpplugError(f"{cls.__name__}.{attr} matches no hpplug hookspec: {hint}")
        args = [a for i, a in enumerate(inspect.signature(getattr(cls, attr)).parameters) if (i, a) != (0, "self")]
        unknown = [a for a in args if a not in HOOKS[hook]]
        if unknown:
            raise HpplugError(f"{cls.__name__}.{attr} takes {', '.join(unknown)}, which {hook} does not pass; "
                              f"it passes: {', '.join(HOOKS[hook])}")
    pm = pluggy.PluginManager("hpplug")  # as hpplug.manager.new_plugin_manager builds it
    pm.add_hookspecs(hookspecs)
    try:  # pluggy's own validation, for anything the checks above do not cover
        pm.register(cls)
    except pluggy.PluginValidationError as exc:
        raise HpplugError(" ".join(str(exc).split())) from None


# --- in-process registration (tests, notebooks) --------------------------------------


def register_local(name: str, cls: type[Plugin]) -> None:
    """Make ``cls`` usable as plugin ``name`` without an installed package.

    Raises :class:`HpplugError` at once if the class would fail discovery's checks.
    """
    if not NAME_PATTERN.match(name):
        raise HpplugError(f"plugin name {name[:80]!r}: {NAME_RULE}, e.g. 'my-plugin'")
    try:
        check_class(cls)
    except HpplugError as exc:
        raise HpplugError(f"plugin {name!r} cannot be registered: {exc}") from None
    _local[name] = cls


def unregister_local(name: str) -> None:
    _local.pop(name, None)
