""""Did you mean ...?" for a misspelled option, plugin, model, data set or config key.

One definition, so every one-line error suggests the same way: the same spelling with
``-`` and ``_`` swapped first (``--cosine.eta-min`` is ``--cosine.eta_min``), then the
closest names by :mod:`difflib`. :func:`reject_extra_args` is where ``hpplug run`` names
an option it does not have (``--epoch``: did you mean ``--epochs``?).
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

import click

from hpplug.errors import HpplugError


def close(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates ``word`` was most likely meant to be, best first (none when nothing is
    close). Leading dashes are not compared: every option shares them."""
    bare = {name.lstrip("-"): name for name in candidates}
    typed = word.lstrip("-")
    folded = {name.replace("-", "_").lower(): name for name in bare}
    exact = folded.get(typed.replace("-", "_").lower())
    found = [exact] if exact is not None and exact != typed else []
    found += difflib.get_close_matches(typed, list(bare), n=n, cutoff=0.6)
    return [bare[name] for name in dict.fromkeys(found) if name != typed][:n]


def hint(word: str, candidates: Iterable[str], fmt: str = "{}") -> str:
    """``"did you mean X? "`` (or ``X or Y``), each name through ``fmt``; ``""`` when nothing is close."""
    found = close(word, candidates)
    return f"did you mean {' or '.join(fmt.format(name) for name in found)}? " if found else ""


def reject_extra_args(ctx: click.Context, catalog: dict[str, Any]) -> None:
    """Name an unknown ``--plugin.param`` or option clearly, with the closest right spelling,
    instead of click's generic error."""
    if not ctx.args:
        return
    arg = ctx.args[0]
    option = arg.split("=", 1)[0]
    if option.startswith("--") and "." in option:
        plugin, key = option[2:].split(".", 1)
        if plugin not in catalog:
            raise HpplugError(f"{option}: unknown plugin {plugin!r}; "
                              f"{hint(plugin, catalog, f'--{{}}.{key}')}see `hpplug plugins`")
        params = catalog[plugin].params
        known = ", ".join(f"--{plugin}.{k}" for k in params)
        raise HpplugError(f"unknown parameter {option}; {hint(key, params, f'--{plugin}.{{}}')}"
                          f"{plugin} takes: {known or 'no parameters'}")
    if option.startswith("-"):
        options = [p.opts[0] for p in ctx.command.get_params(ctx) if p.opts and p.opts[0].startswith("--")]
        raise HpplugError(f"unknown option {option}; {hint(option, options)}see `hpplug run --help`")
    raise HpplugError(f"unexpected argument {arg!r}; see `hpplug run --help`")
