"""Choosing a run's model and data set: a plugin name, ``NAME/VARIANT``, or ``MODULE:ATTR``.

- ``--model cnn``: the installed model plugin ``cnn``.
- ``--model timm/resnet18``: plugin ``timm`` with its ``variant`` parameter set
  (``--timm.arch=resnet18``); the form a sweep can list as values.
- ``--model mymodels:Net`` / ``--dataset mydata:load``: your own code, importable from the
  current folder or ``PYTHONPATH``, wrapped in a plugin class made here. A model callable
  gets the keyword arguments ``num_classes`` and ``input_shape`` its signature accepts and
  returns an ``nn.Module``; a data-set callable gets ``root`` if it accepts it and returns
  ``(train, test)`` map-style data sets or :class:`hpplug.Splits`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable

from hpplug.errors import HpplugError
from hpplug.suggest import hint

KINDS = {"model": "--model", "dataset": "--dataset"}


def select(catalog: dict[str, Any], kind: str, spec: str) -> tuple[Any, dict[str, Any]]:
    """The catalog entry for ``spec`` and the parameter values the spec itself sets."""
    from hpplug.discovery import PluginEntry

    option = KINDS[kind]
    if ":" in spec and spec not in catalog:
        cls = from_target(kind, spec)
        return PluginEntry(spec, "<your code>", "", spec, cls=cls), {}
    name, _, variant = spec.partition("/")
    entry = catalog.get(name)
    if entry is None:
        raise HpplugError(f"unknown {kind} {name!r}; {hint(name, names_of(catalog, kind))}{kinds_hint(catalog, kind)}")
    if not entry.active:
        why = "third-party plugins are off (HPPLUG_DISABLE_PLUGIN_AUTOLOAD)" if entry.disabled else entry.error
        raise HpplugError(f"{kind} {name!r} ({entry.distribution} {entry.version}) cannot be used: {why}")
    if entry.kind_name != kind:
        raise HpplugError(f"{option} {spec}: {name} is a {entry.kind_name} plugin, not a {kind}; "
                          f"{kinds_hint(catalog, kind)}")
    if not variant:
        return entry, {}
    key = entry.variant
    if not key:
        raise HpplugError(f"{option} {spec}: {name} has no variants; use {option} {name} and its "
                          f"--{name}.<param> options")
    return entry, {key: variant}


def names_of(catalog: dict[str, Any], kind: str) -> list[str]:
    return sorted(n for n, e in catalog.items() if e.active and e.kind_name == kind)


def kinds_hint(catalog: dict[str, Any], kind: str) -> str:
    names = names_of(catalog, kind)
    family = [n for n in names if catalog[n].variant]
    extra = "".join(f", {n}/<name>" for n in family)
    return f"installed {kind}s: {', '.join(names) or 'none'}{extra}, or MODULE:ATTR for your own code"


def import_target(spec: str, option: str) -> Any:
    """``MODULE:ATTR`` -> the object; the current folder is importable, as for ``python -m``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise HpplugError(f"{option} {spec}: expected MODULE:ATTR, e.g. {option} mymodels:Net")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises on import
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]:
            raise HpplugError(f"{option} {spec}: no module named {module_name!r} in {Path.cwd()} or on "
                              "PYTHONPATH") from None
        detail = " ".join(str(exc).split())[:300]
        raise HpplugError(f"{option} {spec}: importing {module_name} failed: {type(exc).__name__}: {detail}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = hint(part, names).rstrip()
            raise HpplugError(f"{option} {spec}: {module_name} has no attribute {attr!r}{'; ' + close if close else ''}")
        obj = getattr(obj, part)
    return obj


def call_with(factory: Callable[..., Any], available: dict[str, Any]) -> Any:
    """Call ``factory`` with those of ``available`` its signature accepts (all with **kwargs)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**available)
    return factory(**{k: v for k, v in available.items() if k in params})


def call_user(factory: Callable[..., Any], available: dict[str, Any], where: str) -> Any:
    """Call the user's ``factory`` (:func:`call_with`); whatever it raises becomes one line."""
    try:
        return call_with(factory, available)
    except HpplugError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise HpplugError(f"{where} raised {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None


def from_target(kind: str, spec: str) -> type:
    obj = import_target(spec, KINDS[kind])
    return model_class(spec, obj) if kind == "model" else dataset_class(spec, obj)


def model_class(label: str, factory: Any) -> type:
    """A ``Model`` plugin class around an ``nn.Module`` (used as is), its class, or a function."""
    from torch import nn

    from hpplug.components import Model

    if not callable(factory):
        raise HpplugError(f"--model {label} is a {type(factory).__name__}; expected an nn.Module subclass or a "
                          "function that returns an nn.Module")

    class UserModel(Model):
        __doc__ = f"The model {label} (your code)."
        # Built per trial and stacked; one a pack cannot vectorize is trained alone (PackRefused).
        packable = True

        def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
            if isinstance(factory, nn.Module):
                return factory
            module = call_user(factory, {"num_classes": num_classes, "input_shape": tuple(input_shape)},
                               f"--model {label}")
            if not isinstance(module, nn.Module):
                raise HpplugError(f"--model {label} returned a {type(module).__name__}, not a torch.nn.Module")
            return module

    UserModel.__qualname__ = UserModel.__name__ = f"UserModel[{label}]"
    return UserModel


def dataset_class(label: str, factory: Any) -> type:
    """A ``Dataset`` plugin class around a function returning ``(train, test)`` or ``Splits``."""
    from hpplug.components import Dataset, Splits

    if not callable(factory):
        raise HpplugError(f"--dataset {label} is a {type(factory).__name__}; expected a function that returns "
                          "(train, test) data sets")

    class UserDataset(Dataset):
        __doc__ = f"The data set {label} (your code)."

        def load(self, root: Path, download: bool) -> Splits:
            # (train, test) or Splits: the engine turns it into Splits (as_splits) for every data set.
            return call_user(factory, {"root": str(root)}, f"--dataset {label}")

    UserDataset.__qualname__ = UserDataset.__name__ = f"UserDataset[{label}]"
    return UserDataset


def as_splits(result: Any, where: str) -> Any:
    """``Splits`` as they are; ``(train, test)`` -> ``Splits``; anything else is refused."""
    from hpplug.components import Splits

    if isinstance(result, Splits):
        splits = result
    elif isinstance(result, (tuple, list)) and len(result) == 2:
        splits = Splits(train=result[0], test=result[1])
    else:
        raise HpplugError(f"{where} returned {_shape_of(result)}; expected (train, test): two map-style "
                          "torch.utils.data.Dataset objects, or hpplug.Splits")
    for part in ("train", "val", "test"):
        ds = getattr(splits, part)
        if (ds is not None or part == "train") and not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
            raise HpplugError(f"{where}: its {part} split is {_shape_of(ds)}, not a map-style data set "
                              "(an object with __len__ and __getitem__)")
    return splits


def _shape_of(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {len(value)}-item {type(value).__name__}"
    return "None" if value is None else f"a {type(value).__name__}"
