"""``hpplug run --help`` laid out for a person: the core options by topic, then each
plugin's options under its name, only for the plugins that apply.

``hpplug run --plugin cosine --help`` shows cosine's options and the model's and the data
set's (``--model``/``--dataset``, default or given, or those of a ``--config`` file), not
every installed plugin's. The groups come from :data:`hpplug.config.OPTION_GROUPS`.
"""

from __future__ import annotations

from typing import Any

import click

from hpplug.config import RunConfig, option_groups
from hpplug.errors import HpplugError

ARGV_KEY = "hpplug.argv"
RUN_SECTION = ("plugin", "config_file", "print_config", "resume")
_SELECTING = {"--plugin": "plugin", "--plugins": "plugin", "-p": "plugin", "--model": "model",
              "--dataset": "dataset", "--config": "config"}


def selection(args: list[str]) -> dict[str, list[str]]:
    """What the command line selects, read from its raw words: help is shown before the
    options are processed. ``{"plugin": [...], "model": [...], "dataset": [...], "config": [...]}``."""
    found: dict[str, list[str]] = {key: [] for key in ("plugin", "model", "dataset", "config")}
    i = 0
    while i < len(args):
        word = args[i]
        name, eq, value = word.partition("=")
        if name in _SELECTING:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            found[_SELECTING[name]].append(value)
        elif word.startswith("-p") and not word.startswith("--") and len(word) > 2:
            found["plugin"].append(word[2:])
        i += 1
    return found


def applying(catalog: dict[str, Any], args: list[str]) -> list[str] | None:
    """The plugins whose options apply to this command line, model and data set included;
    None when it selects nothing (then every plugin's options are shown)."""
    from hpplug import configfile
    from hpplug.run_args import split_plugin_names

    chosen = selection(args)
    if not any(chosen.values()):
        return None
    plugins, specs = [], {kind: str(getattr(RunConfig(), kind)) for kind in ("model", "dataset")}
    for path in chosen["config"][-1:]:
        try:
            layer = configfile.split(configfile.read(path), path)
        except HpplugError:
            continue
        plugins = list(layer.plugins or [])
        specs.update({kind: str(layer.core[kind]) for kind in specs if kind in layer.core})
    if chosen["plugin"]:
        try:
            plugins = split_plugin_names(tuple(chosen["plugin"]))
        except HpplugError:
            plugins = []
    specs.update({kind: chosen[kind][-1] for kind in specs if chosen[kind]})
    names = plugins + [spec.partition("/")[0] for spec in specs.values()]
    return [name for name in dict.fromkeys(names) if name in catalog]


class RunCommand(click.Command):
    """``hpplug run``: options from the installed plugins, help grouped for reading."""

    def __init__(self, *args: Any, catalog: dict[str, Any], plugin_options: dict[str, list[click.Option]],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.catalog = catalog
        self.plugin_options = plugin_options

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGV_KEY] = list(args)  # --help is handled before --plugin is: it reads these
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        params = {p.name: p for p in self.get_params(ctx)}

        def section(title: str, names: list[str]) -> None:
            records = [r for n in names if n in params for r in [params[n].get_help_record(ctx)] if r]
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)

        help_option = self.get_help_option(ctx)
        section("Run", [*RUN_SECTION, *([help_option.name] if help_option is not None else [])])
        for title, names in option_groups().items():
            section(title, names)
        shown = applying(self.catalog, ctx.meta.get(ARGV_KEY, []))
        names = shown if shown is not None else sorted(
            self.plugin_options, key=lambda n: (self.catalog[n].kind_name, n))
        for name in names:
            options = self.plugin_options.get(name)
            if options:
                entry = self.catalog[name]
                with formatter.section(f"{name} ({entry.kind_name}; {entry.distribution} {entry.version})"):
                    formatter.write_dl([r for o in options for r in [o.get_help_record(ctx)] if r])
        if shown is not None:
            formatter.write_paragraph()
            formatter.write_text("Only the options of the plugins, model and data set this command line selects "
                                 "are shown: every plugin's with `hpplug run --help`, one plugin's with "
                                 "`hpplug plugins NAME`.")
