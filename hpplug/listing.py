"""``hpplug plugins [NAME] [--json]``: what is installed, or everything about one plugin.

The JSON gives each parameter's range as fields (``type``, ``default``, ``min``, ``max``,
``choices``) for machines; the text says it in words for people. One plugin's view adds
the first paragraph of its method card (the ``README.md`` beside its module).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from hpplug.errors import HpplugError
from hpplug.plugin_cache import param_json
from hpplug.suggest import hint


def describe(entry: Any) -> dict[str, Any]:
    """One plugin as data: status, kind, distribution, hooks, slot, parameters with their ranges."""
    info = entry.info
    return {"name": entry.name, "status": entry.status, "kind": entry.kind_name,
            "distribution": entry.distribution, "version": entry.version, "builtin": entry.builtin,
            "hooks": entry.hooks, "params": [param_json(k, p) for k, p in entry.params.items()],
            "slot": info.slot if info is not None else None, "error": entry.error}


def param_lines(entry: Any) -> list[str]:
    """``--name.param  type = default  (range in words)  help``, one per parameter."""
    return [f"--{entry.name}.{key}  {p.type_name} = {p.default!r}  ({p.describe_range()})  {p.help}"
            for key, p in entry.params.items()]


def show_one(entry: Any, as_json: bool) -> None:
    row = describe(entry)
    paragraph, path = (entry.info.card, entry.info.card_path) if entry.info is not None else (None, None)
    if as_json:
        click.echo(json.dumps({**row, "card": paragraph, "card_path": path}, indent=2, default=str))
        return
    click.echo(f"{row['name']}  [{row['kind']}]  {row['distribution']} {row['version']}  {_status(row)}")
    if row["slot"]:
        click.echo(f"  slot: {row['slot']}")
    click.echo("  hooks: " + (", ".join(row["hooks"]) or "none"))
    click.echo("  parameters:" + ("" if row["params"] else " none"))
    for line in param_lines(entry):
        click.echo("    " + line)
    if paragraph:
        click.echo("")
        click.echo(textwrap.fill(paragraph, width=100, initial_indent="  ", subsequent_indent="  "))
    if path:
        click.echo(f"  method card: {path}")


def _status(row: dict[str, Any]) -> str:
    from hpplug.discovery import DISABLE_AUTOLOAD_ENV

    return {"active": "active", "disabled": f"disabled ({DISABLE_AUTOLOAD_ENV})"}.get(
        row["status"], f"ERROR: {row['error']}")


def _complete_name(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from hpplug.completion import items
    from hpplug.plugin_cache import catalog

    return items(catalog(), incomplete, kinds=None)


@click.command("plugins")
@click.argument("name", required=False, shell_complete=_complete_name)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines (ranges as min, max, choices).")
def plugins_command(name: str | None, as_json: bool) -> None:
    """List plugins: status (active, disabled or the error), kind, distribution, hooks,
    parameters; with NAME, one plugin in full, with its method card's first paragraph."""
    from hpplug.discovery import DISABLE_AUTOLOAD_ENV, third_party_disabled
    from hpplug.plugin_cache import catalog as plugin_catalog

    catalog = plugin_catalog()
    if name is not None:
        if name not in catalog:
            raise HpplugError(f"no plugin named {name!r}; {hint(name, catalog)}"
                              "`hpplug plugins` lists the installed ones")
        show_one(catalog[name], as_json)
        return
    entries = sorted(catalog.values(), key=lambda e: (e.kind_name, e.name))
    rows = [describe(entry) for entry in entries]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if third_party_disabled():
        click.echo(f"{DISABLE_AUTOLOAD_ENV} is set: only hpplug's own plugin packages are loaded.\n")
    for entry, row in zip(entries, rows):
        click.echo(f"{row['name']}  [{row['kind']}]  {row['distribution']} {row['version']}  {_status(row)}")
        if row["hooks"]:
            click.echo("    hooks: " + ", ".join(row["hooks"]))
        for line in param_lines(entry):
            click.echo("    " + line)
    if not rows:
        click.echo("No plugins installed: pip install hpplug's plugins/ packages or a third-party one.")
        return
    count = {s: sum(r["status"] == s for r in rows) for s in ("active", "disabled", "error")}
    click.echo(f"\n{count['active']} active, {count['disabled']} disabled, {count['error']} with errors")
