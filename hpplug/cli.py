"""The ``hpplug`` command line. Errors become one line on stderr and exit code 2 here.

Every option also takes the form ``wandb agent`` writes (``--batch_size=64``,
``--plugin=['cosine', 'dropout']``, ``--cosine.eta_min=0.001``), so a sweep can set
anything the command line can.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from contextvars import ContextVar
from typing import Any

import click

from hpplug import __version__
from hpplug.config import OPTIONS
from hpplug.errors import HpplugError, PluginError, one_line
from hpplug.run_args import DEFAULTS, run_setup, sweep_overrides
from hpplug.suggest import hint


def _core_option(name: str, ctype: Any, help: str, catalog: dict[str, Any]) -> click.Option:
    from hpplug.completion import CHOSEN_ALONE, names_for

    decls = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else []) + [name]
    default = getattr(DEFAULTS, name)
    complete = names_for(catalog, name) if name in CHOSEN_ALONE else None
    return click.Option(decls, type=ctype, default=default, show_default=default is not None, help=help,
                        shell_complete=complete)


def _plugin_options(catalog: dict[str, Any]) -> dict[str, list[click.Option]]:
    """``--<plugin>.<param>`` options, by plugin (``hpplug run --help`` lists them under its name)."""
    options: dict[str, list[click.Option]] = {}
    for name, entry in sorted(catalog.items()):
        if not entry.active:
            continue
        for key, param in entry.params.items():
            default = "unset" if param.default is None else param.default
            options.setdefault(name, []).append(click.Option(
                [f"--{name}.{key}", f"{name.replace('-', '_')}__{key}"], type=click.STRING, default=None,
                metavar=param.type_name.upper(), help=f"{param.help} (default {default}; {param.describe_range()})"))
    return options


def report(result: Any) -> None:
    """What to do next, after the closing lines the run printed (hpplug.tracking.closing_line;
    main process only); an interrupted run exits 128 + the signal's number."""
    if not result.is_main:
        if result.status == "interrupted":
            sys.exit(128 + (result.signum or 2))
        return
    if result.status == "stopped":
        click.echo(f"stopped early at update {result.summary.get('updates')}: {result.summary.get('stop_reason')}")
    if result.status == "interrupted":
        click.echo(f"interrupted at update {result.summary.get('updates')}; checkpoint saved. "
                   f"Resume with: hpplug run --resume {result.record_dir}", err=True)
        sys.exit(128 + (result.signum or 2))


def run_command(catalog: dict[str, Any], imported: bool = True) -> click.Command:
    """``hpplug run``, with one option per parameter of every installed plugin. A command built
    from the metadata cache (``imported`` False: for help and completion) imports and checks
    the plugins for real if it does come to run."""

    def callback(plugin: tuple[str, ...], resume: str | None, config_file: str | None, print_config: bool,
                 **kwargs: Any) -> None:
        from hpplug import configfile, engine, preflight
        from hpplug.discovery import discover

        plugins_now = catalog if imported else discover()
        config, entries, resume_dir = run_setup(plugins_now, click.get_current_context(), plugin, resume,
                                                config_file, kwargs)
        if print_config:  # with what W&B's variables would fill in, as the run would use it
            from hpplug.config import with_environment

            click.echo(configfile.dump(with_environment(config, os.environ)), nl=False)
            return
        preflight.check(config, os.environ)
        result = engine.run(config, entries, apply_overrides=sweep_overrides(plugins_now), resume_dir=resume_dir)
        report(result)

    from hpplug.completion import names_for
    from hpplug.run_help import RunCommand

    names = ", ".join(sorted(n for n, e in catalog.items() if e.active)) or "none installed"
    params = [click.Option(["--plugin", "--plugins", "-p", "plugin"], multiple=True, metavar="NAME",
                           shell_complete=names_for(catalog, "plugin"),
                           help=f"Plugin to use; repeat for several. Installed: {names}."),
              click.Option(["--config", "config_file"], type=click.Path(), metavar="FILE", default=None,
                           help="Options from a YAML file (or a run's config.json); the command line overrides "
                                "it. --print-config writes one."),
              click.Option(["--print-config"], is_flag=True,
                           help="Print the resolved configuration as YAML for --config, and exit without training."),
              click.Option(["--resume"], metavar="auto|DIR", default=None,
                           help="Continue a run from its checkpoint: its record folder, or auto for the "
                                "newest unfinished one in --output-dir. Other options are taken from the run.")]
    by_plugin = _plugin_options(catalog)
    params += [_core_option(*spec, catalog) for spec in OPTIONS] + [o for opts in by_plugin.values() for o in opts]
    return RunCommand(
        "run", callback=callback, params=params, catalog=catalog, plugin_options=by_plugin,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                          "max_content_width": 100},
        help="Train a model assembled from plugins, tracked in W&B and in a local run record.\n\n"
             "Defaults reproduce the seed article: MLP with 500 hidden units, SGD lr 0.1, batch 64 "
             "(--val-fraction 0 trains on the whole training set, as the article does). "
             "Plugin parameters are --<plugin>.<param>=VALUE, e.g. --cosine.eta_min=0.0001; "
             "`hpplug run --plugin NAME --help` shows only the options that apply.",
        short_help=RUN_SHORT_HELP)


RUN_SHORT_HELP = "Train a model assembled from plugins."
SHOWING_RUN = "hpplug.showing_run"  # ctx.meta: the command line asks for help, not for a run


# Commands defined in their own modules, imported only when used: "name": "module:attr".
LAZY_COMMANDS = {
    "plugins": "hpplug.listing:plugins_command",
    "sweep": "hpplug.sweep.command:sweep_command",
    "new-plugin": "hpplug.scaffold:new_plugin_command",
}


class HpplugCLI(click.Group):
    """Builds ``run`` on demand (its options come from the installed plugins) and
    imports the other commands' modules only when they are used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "run", *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "run":
            if ctx.resilient_parsing or ctx.meta.get(SHOWING_RUN):  # completion or help: nothing imported
                from hpplug.plugin_cache import catalog

                return run_command(catalog(), imported=False)
            from hpplug.discovery import discover

            return run_command(discover())
        if name in LAZY_COMMANDS:
            import importlib

            module, attr = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``hpplug --help``, without building ``run``: that would import
        every plugin, and torch with them, for one line of help."""
        rows = [("run", RUN_SHORT_HELP)]
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name) if name != "run" else None
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                             list[str]]:
        name = args[0] if args else ""
        ctx.meta[SHOWING_RUN] = any(arg in ctx.help_option_names for arg in args[1:])
        if not name.startswith("-") and name != "run" and self.get_command(ctx, name) is None:
            raise click.UsageError(f"no command {name!r}; {hint(name, self.list_commands(ctx))}"
                                   "`hpplug --help` lists them")
        return super().resolve_command(ctx, args)


DEBUG_ENV = "HPPLUG_DEBUG"
# Set by --debug while it is parsed, so that main() knows even when the error comes first.
_debug: ContextVar[bool] = ContextVar("hpplug_debug", default=False)


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _debug.set(True)


@click.group(cls=HpplugCLI, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hpplug")
@click.option("--debug", is_flag=True, is_eager=True, expose_value=False, callback=_set_debug,
              help=f"Show the traceback of an unexpected error or a failing plugin (or set {DEBUG_ENV}=1).")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """hpplug: tune PyTorch training runs with plugins, tracked in Weights & Biases."""
    if ctx.invoked_subcommand is None:  # `hpplug` alone: the usage, as a request for help
        click.echo(ctx.get_help())


def _unexpected(exc: Exception) -> str:
    """One line for an error that is not bad input: a failing plugin, a file, anything else."""
    if isinstance(exc, PluginError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        paths = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{paths + ': ' if paths else ''}{exc.strerror} ({type(exc).__name__})"
    return f"unexpected {one_line(exc)}; rerun with `hpplug --debug ...` for the traceback"


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and exit code 2 for bad input, one line and exit code 1 for a failing
    plugin or anything unexpected; the traceback only with --debug or HPPLUG_DEBUG=1. Called
    without ``argv`` it is the process (``hpplug``, ``python -m hpplug``): a command that ends
    well ends it at once (:func:`hpplug.exiting.exit_now`)."""
    warnings.filterwarnings("ignore", message=".*Valid config keys have changed in V2.*")
    token = _debug.set(os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"))
    try:
        code = cli.main(args=argv, prog_name="hpplug", standalone_mode=False)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except HpplugError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place every other error becomes one line
        if _debug.get():
            traceback.print_exception(exc)
        click.echo(f"Error: {_unexpected(exc)}", err=True)
        sys.exit(1)
    finally:
        _debug.reset(token)
    code = code if isinstance(code, int) else 0
    if argv is None:
        from hpplug.exiting import exit_now

        exit_now(code)
    sys.exit(code)
