"""Shell completion of plugin, model and data-set names (click's ``_HPPLUG_COMPLETE``).

``eval "$(_HPPLUG_COMPLETE=bash_source hpplug)"`` (or ``zsh_source``, ``fish_source``)
completes commands and options through click; these callbacks add the installed names
after ``--plugin``, ``--model``, ``--dataset`` and ``hpplug plugins``.
"""

from __future__ import annotations

from typing import Any, Callable

import click
from click.shell_completion import CompletionItem

CHOSEN_ALONE = ("model", "dataset")  # one per run, picked with --model / --dataset, never --plugin


def items(catalog: dict[str, Any], incomplete: str, kinds: tuple[str, ...] | None,
          exclude: tuple[str, ...] = ()) -> list[CompletionItem]:
    """The active plugins of ``kinds`` (None: any) not in ``exclude`` that start with what was
    typed; a family with variants also as ``NAME/`` (``timm/``). After a comma (``--plugin
    cosine,dr``) the last name is completed."""
    head, comma, typed = incomplete.rpartition(",")
    prefix = head + comma
    out = []
    for name, entry in sorted(catalog.items()):
        kind = entry.kind_name
        if not entry.active or (kinds is not None and kind not in kinds) or kind in exclude:
            continue
        choices = [name] + ([f"{name}/"] if entry.variant else [])
        out += [CompletionItem(prefix + c, help=kind) for c in choices if c.startswith(typed)]
    return out


def names_for(catalog: dict[str, Any], option: str) -> Callable[..., list[CompletionItem]]:
    """The ``shell_complete`` callback of ``--plugin``, ``--model`` or ``--dataset``."""
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        if option == "plugin":
            return items(catalog, incomplete, None, exclude=CHOSEN_ALONE)
        return items(catalog, incomplete, (option,))

    return complete
