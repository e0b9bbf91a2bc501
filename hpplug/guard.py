"""Every plugin hook runs guarded: what a plugin raises, or returns that it must not, ends the
run as a :class:`~hpplug.errors.PluginError` naming the plugin and the hook.

:func:`guard` wraps each hook implementation once, when :func:`hpplug.manager.build` registers
the plugin, so no call site needs a ``try``. Results are checked there too: pluggy hands the
engine a bare list of results, so only the wrapper still knows which plugin returned what.
An :class:`~hpplug.errors.HpplugError` a plugin raises about its own parameters passes as is.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import pluggy
import torch

from hpplug.discovery import HOOKS
from hpplug.errors import HpplugError, PluginError, one_line

# Metric names the engine and the run record write: a plugin's epoch-end extras may not replace them.
RESERVED_METRICS = frozenset({"epoch", "lr", "step", "time", "status", "updates", "epochs_done",
                              "error", "error_plugin", "error_hook"})
RESERVED_PREFIXES = ("train/", "test/", "val/", "best/")
# Options of a parameter group that must be finite numbers >= 0 (set_lr multiplies lr).
GROUP_NUMBERS = frozenset({"lr", "weight_decay", "momentum", "dampening", "eps"})

Check = Callable[[Any, dict[str, Any]], "str | None"]
# Arguments a hook may read but not change: the config once set. (``progress`` is frozen and
# ``metrics`` a read-only mapping: they refuse a change when it is tried.)
READ_ONLY: dict[str, Callable[[Any], Any]] = {"config": lambda c: c.to_dict()}
READ_ONLY_HINT = {"config": " (change it in hpplug_adjust_config)"}


def guard(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Wrap every hook implementation of the registered ``plugin``, and its checkpoint methods."""
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                (_wrap_wrapper if impl.wrapper or impl.hookwrapper else _wrap)(impl, name, caller.name)
    for method in ("state_dict", "load_state_dict"):
        setattr(plugin, method, _method(getattr(plugin, method), name, method))


def run_guarded(function: Callable[..., Any], args: Any, plugin: str, where: str) -> Any:
    """``function(*args)``, raising only HpplugError (the plugin's word on its own parameters)
    or PluginError (anything else, with the plugin's exception as its cause)."""
    try:
        return function(*args)
    except (HpplugError, PluginError):
        raise
    except (Exception, SystemExit) as exc:  # sys.exit in a hook is a bug too; Ctrl-C passes
        raise PluginError(plugin, where, one_line(exc)) from exc


def _wrap(impl: Any, plugin: str, hook: str) -> None:
    """The wrapper takes every argument of the hook (a check sees ``targets`` even when the
    plugin's loss takes only ``logits``) and passes the plugin the ones it asked for."""
    every, own, function, check = HOOKS[hook], impl.argnames, impl.function, CHECKS.get(hook)
    watched = [name for name in READ_ONLY if name in every and (name, hook) != ("config", "hpplug_adjust_config")]

    @functools.wraps(function)
    def call(*args: Any) -> Any:
        arguments = dict(zip(every, args))
        before = [READ_ONLY[name](arguments[name]) for name in watched]
        result = run_guarded(function, [arguments[a] for a in own], plugin, hook)
        try:
            problem = check(result, arguments) if check is not None else None
        except Exception as exc:  # noqa: BLE001 - a result that breaks when read (a hostile Mapping)
            problem = f"returned {type(result).__name__} that cannot be read: {one_line(exc)}"
        for name, seen in zip(watched, before):
            if not problem and READ_ONLY[name](arguments[name]) != seen:
                problem = f"changed the {name} it was given, which is read-only here{READ_ONLY_HINT[name]}"
        if problem:
            raise PluginError(plugin, hook, problem)
        return result

    impl.function = call
    impl.argnames = every


def _wrap_wrapper(impl: Any, plugin: str, hook: str) -> None:
    """A hook wrapper is a generator around the other implementations. What comes out of it
    is its own doing: whatever it is thrown from inside is already a PluginError."""
    function = impl.function

    @functools.wraps(function)
    def call(*args: Any) -> Any:
        try:
            return (yield from function(*args))
        except (HpplugError, PluginError):
            raise
        except (Exception, SystemExit) as exc:
            raise PluginError(plugin, hook, one_line(exc)) from exc

    impl.function = call


def _method(method: Callable[..., Any], plugin: str, name: str) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = run_guarded(functools.partial(method, **kwargs), args, plugin, name)
        if name == "state_dict" and not isinstance(result, dict):
            raise PluginError(plugin, name, f"returned {_show(result)}: state_dict must return a dict")
        return result

    return call


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile result
        text = "(cannot be shown)"
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# --- what each hook may return (None: nothing to say) -----------------------------------


def _adjust_config(result: Any, args: dict[str, Any]) -> str | None:
    """The config a plugin changed must still pass the options' own types."""
    import click

    from hpplug.config import OPTION_TYPES

    config = args["config"]
    for name, ctype in OPTION_TYPES.items():
        value = getattr(config, name)
        if value is None:
            continue
        try:
            converted = ctype.convert(value, None, None)
        except click.BadParameter as exc:
            return f"set config.{name} = {value!r}: {exc.message}"
        if converted != value or (isinstance(converted, int) and not isinstance(value, int)):
            return f"set config.{name} = {_show(value)}; expected {_show(converted)}"
    return None


def _param_groups(result: Any, args: dict[str, Any]) -> str | None:
    if result is None:
        return None
    example = "return a list of dicts such as [{'params': [...], 'weight_decay': 0.0}], or None"
    if not isinstance(result, (list, tuple)) or not result:
        return f"returned {_show(result)}: {example}"
    seen: set[int] = set()
    for i, group in enumerate(result):
        if not isinstance(group, dict) or "params" not in group:
            return f"returned group {i} = {_show(group)}, not a dict with 'params': {example}"
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, (str, bytes, dict, set)) or not hasattr(params, "__iter__"):
            return f"returned group {i} with params {_show(params)}: give a list of the model's parameters"
        group["params"] = params = list(params)  # a generator would be used up by this check
        for p in params:
            if not isinstance(p, torch.Tensor) or not p.is_leaf:
                return f"returned group {i} holding {_show(p)}: params must be the model's parameters"
            if id(p) in seen:
                return f"returned a parameter of shape {list(p.shape)} in more than one group"
            seen.add(id(p))
        for key in GROUP_NUMBERS & group.keys():
            if not (_number(group[key]) and math.isfinite(group[key]) and group[key] >= 0):
                return f"returned group {i} with {key} = {_show(group[key])}: it must be a finite number >= 0"
    return None


def _lr_factor(result: Any, args: dict[str, Any]) -> str | None:
    if result is None:
        return None
    if not _number(result):
        return f"returned {_show(result)}, not a number: return the LR factor as a float >= 0, or None"
    if not math.isfinite(result) or result < 0:
        return f"returned the LR factor {result!r}: it must be a finite number >= 0"
    return None


def _transform_batch(result: Any, args: dict[str, Any]) -> str | None:
    batch = args["batch"]
    x, y = batch.x, batch.y
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        return f"left batch.x = {_show(x)} and batch.y = {_show(y)}; both must be tensors"
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        return f"left a batch of inputs {list(x.shape)} with labels {list(y.shape)}: one label per input"
    if not x.is_floating_point():
        return f"left batch.x as {x.dtype}; the model takes floating-point inputs"
    if y.ndim == 2 and not (y.is_floating_point() and y.shape[1] == batch.num_classes):
        return (f"left batch.y as {y.dtype} {list(y.shape)}: targets are class indices [{len(y)}] or class "
                f"probabilities [{len(y)}, {batch.num_classes}] (floats); batch.soft_targets() gives the latter")
    if y.ndim > 2 or (y.ndim == 1 and y.is_floating_point()):
        return (f"left batch.y as {y.dtype} {list(y.shape)}: targets are class indices [{len(y)}] (integers) "
                f"or class probabilities [{len(y)}, {batch.num_classes}] (floats)")
    return None


def _loss(result: Any, args: dict[str, Any]) -> str | None:
    if result is None:
        return None
    n = len(args["targets"])
    if not isinstance(result, torch.Tensor):
        return f"returned {_show(result)}, not a tensor: return the loss per sample, shape [{n}], or None"
    if tuple(result.shape) != (n,):
        return f"returned a loss of shape {list(result.shape)}; expected one value per sample, shape [{n}]"
    if not result.is_floating_point():
        return f"returned a {result.dtype} loss; expected a floating-point tensor"
    if args["logits"].requires_grad and not result.requires_grad:
        return "returned a loss that does not depend on the logits (requires_grad is False): nothing would train"
    return None


def _epoch_end(result: Any, args: dict[str, Any]) -> str | None:
    return _extra_metrics(result, args["metrics"])


def _update_metrics(result: Any, args: dict[str, Any]) -> str | None:
    return _extra_metrics(result, {})


def _extra_metrics(result: Any, logged: Mapping[str, Any]) -> str | None:
    """Metrics a plugin adds: its own names, number values."""
    if result is None:
        return None
    if not isinstance(result, Mapping):
        return f"returned {_show(result)}: return a dict of metric name -> number, or None"
    for key, value in result.items():
        if not isinstance(key, str) or not key:
            return f"returned the metric name {key!r}: names are non-empty strings"
        if key in logged or key in RESERVED_METRICS or key.startswith(RESERVED_PREFIXES):
            return (f"returned the metric {key!r}, which hpplug logs itself and a sweep may optimize: "
                    "use a name of the plugin's own, such as '<plugin>/<metric>'")
        if not isinstance(value, numbers.Real):
            return f"returned the metric {key!r} = {_show(value)}, not a number (use float(...) or .item())"
    return None


def _should_stop(result: Any, args: dict[str, Any]) -> str | None:
    if result is None or (isinstance(result, str) and result.strip() and "\n" not in result):
        return None
    return f"returned {_show(result)}: return the reason to stop as one line of text, or None to go on"


def _optimizer_step(result: Any, args: dict[str, Any]) -> str | None:
    if result is None or result is True:
        return None
    return f"returned {_show(result)}: return True once the plugin has stepped, or None to leave the step to hpplug"


CHECKS: dict[str, Check] = {
    "hpplug_adjust_config": _adjust_config,
    "hpplug_param_groups": _param_groups,
    "hpplug_lr_factor": _lr_factor,
    "hpplug_transform_batch": _transform_batch,
    "hpplug_loss": _loss,
    "hpplug_epoch_end": _epoch_end,
    "hpplug_update_metrics": _update_metrics,
    "hpplug_should_stop": _should_stop,
    "hpplug_optimizer_step": _optimizer_step,
}
