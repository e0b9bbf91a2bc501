"""The ``hpplug`` command line. Errors become one line on stderr and exit code 2 here.

Every option also takes the form ``wandb agent`` writes (``--batch_size=64``,
``--plugin=['cosine', 'dropout']``, ``--cosine.eta_min=0.001``), so a sweep can set
anything the command line can.
"""

from __future__ import annotations

import ast
import os
import sys
import traceback
import warnings
from contextvars import ContextVar
from dataclasses import fields
from typing import Any

import click
from click.core import ParameterSource

from hpplug import __version__
from hpplug.config import OPTION_TYPES, OPTIONS, RunConfig
from hpplug.errors import HpplugError, PluginError, one_line
from hpplug.suggest import hint, reject_extra_args

DEFAULTS = RunConfig()


def _core_option(name: str, ctype: Any, help: str, catalog: dict[str, Any]) -> click.Option:
    from hpplug.completion import CHOSEN_ALONE, names_for

    decls = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else []) + [name]
    default = getattr(DEFAULTS, name)
    complete = names_for(catalog, name) if name in CHOSEN_ALONE else None
    return click.Option(decls, type=ctype, default=default, show_default=default is not None, help=help,
                        shell_complete=complete)


def split_plugin_names(values: tuple[str, ...]) -> list[str]:
    """``--plugin a --plugin b``, ``--plugin a,b`` or ``--plugin=['a', 'b']`` (wandb agent)."""
    names: list[str] = []
    for value in values:
        text = value.strip()
        if text.startswith("["):
            try:
                names += [str(v) for v in ast.literal_eval(text)]
            except (ValueError, SyntaxError):
                raise HpplugError(f"--plugin {value!r} is not a list such as ['cosine', 'dropout']") from None
        else:
            names += [n.strip() for n in text.split(",") if n.strip()]
    return names


def _plugin_options(catalog: dict[str, Any]) -> dict[str, list[click.Option]]:
    """``--<plugin>.<param>`` options, by plugin (``hpplug run --help`` lists them under its name)."""
    options: dict[str, list[click.Option]] = {}
    for name, entry in sorted(catalog.items()):
        if not entry.active:
            continue
        for key, param in entry.info.params.items():
            default = "unset" if param.default is None else param.default
            options.setdefault(name, []).append(click.Option(
                [f"--{name}.{key}", f"{name.replace('-', '_')}__{key}"], type=click.STRING, default=None,
                metavar=param.type_name.upper(), help=f"{param.help} (default {default}; {param.describe_range()})"))
    return options


def _plugin_values(catalog: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pop ``<plugin>__<param>`` keyword arguments into ``{plugin: {param: raw}}``."""
    raw: dict[str, dict[str, Any]] = {}
    for name, entry in catalog.items():
        if not entry.active:
            continue
        for key in entry.info.params:
            value = kwargs.pop(f"{name.replace('-', '_')}__{key}", None)
            if value is not None:
                raw.setdefault(name, {})[key] = value
    return raw


def build_config(catalog: dict[str, Any], plugin_names: list[str], raw: dict[str, dict[str, Any]],
                 core: dict[str, Any]) -> tuple[RunConfig, list[Any]]:
    """Validate the plugins, the model, the data set and their values; returns the config and
    the chosen entries (the ``--plugin`` ones in order, then the model's and the data set's)."""
    from hpplug import manager, selection

    core = {key: _convert(key, value) for key, value in core.items()}  # also for Python callers
    entries = manager.resolve(catalog, plugin_names)
    raw = {name: dict(values) for name, values in raw.items()}
    chosen = []
    for kind in ("model", "dataset"):
        entry, implied = selection.select(catalog, kind, str(core.get(kind, getattr(DEFAULTS, kind))))
        given = raw.setdefault(entry.name, {})
        for key, value in implied.items():
            if key in given and str(given[key]) != value:
                raise HpplugError(f"--{kind} {core[kind]} and --{entry.name}.{key}={given[key]} disagree; give one")
            given[key] = value
        chosen.append(entry)
    entries += chosen
    names = [e.name for e in entries]
    if os.environ.get("WANDB_SWEEP_ID"):  # a sweep may set parameters of plugins it did not pick
        raw = {name: values for name, values in raw.items() if name in names}
    for name in set(raw) - set(names):
        kind = catalog[name].kind_name if name in catalog else None
        if kind in ("model", "dataset"):
            current = {"model": chosen[0], "dataset": chosen[1]}[kind].name
            raise HpplugError(f"--{name}.* options are given but the {kind} is {current}: add --{kind} {name}")
    values = manager.parse_values(entries, raw)
    return RunConfig(plugins=plugin_names, plugin_params=values, **core), entries


def _convert(key: str, value: Any) -> Any:
    """A core option's value through its one type (idempotent for values click converted)."""
    if key not in OPTION_TYPES or value is None:
        return value
    try:
        return OPTION_TYPES[key].convert(value, None, None)
    except click.BadParameter as exc:
        raise HpplugError(f"--{key.replace('_', '-')}: {exc.message}") from None


def sweep_overrides(catalog: dict[str, Any]):
    """The merge of ``wandb.config`` into a config: in a sweep the sweep's values win."""

    def apply(config: RunConfig, values: dict[str, Any]) -> tuple[RunConfig, list[Any]]:
        core = {f.name: getattr(config, f.name) for f in fields(RunConfig)
                if f.name not in ("plugins", "plugin_params", "num_processes")}
        for key, value in values.items():
            if key in OPTION_TYPES and value is not None and value != core[key]:
                try:
                    core[key] = _convert(key, value)
                except HpplugError as exc:
                    raise HpplugError(f"W&B config {key}={value!r}: {str(exc).partition(': ')[2]}") from None
        plugins = values.get("plugin", values.get("plugins", config.plugins))
        names = split_plugin_names((str(plugins),)) if not isinstance(plugins, list) else [str(p) for p in plugins]
        from hpplug import selection

        keep = set(names) | {selection.select(catalog, kind, str(core[kind]))[0].name for kind in ("model", "dataset")}
        raw = {name: dict(params) for name, params in config.plugin_params.items() if name in keep}
        for key, value in values.items():
            if "." in key and key.split(".", 1)[0] in catalog:
                plugin, param = key.split(".", 1)
                raw.setdefault(plugin, {})[param] = value
        return build_config(catalog, names, raw, core)

    return apply


def _resume_dir(resume: str | None, output_dir: str):
    """The record folder to resume: --resume, or a sweep's re-run of a preempted trial
    (``WANDB_RUN_ID`` naming a record with a checkpoint). Refuses, before anything is
    written, run ids that are not plain ids, folders that are not run records, damage,
    and a ``WANDB_RUN_ID`` whose run already finished."""
    from pathlib import Path

    from hpplug import record

    if resume == "auto":
        from hpplug.checkpoint_files import find_resumable

        path = find_resumable(Path(output_dir))
    elif resume:
        path = Path(os.path.normpath(Path(resume).absolute()))  # "." and "runs/x/" name their folder
        if not path.is_dir():
            raise HpplugError(f"--resume {resume}: no such run folder; pass a run's record folder "
                              f"(e.g. {Path(output_dir) / '<run-id>'}) or auto")
        record.check_run_id(path.name, f"--resume {resume}: the folder name")
    else:
        run_id = record.env_run_id()
        if run_id is None:
            return None
        path = Path(output_dir) / run_id
        if not record.resumable(path):
            return None  # nothing there yet, or an attempt without a checkpoint: it is kept aside
    summary = path / record.SUMMARY
    if summary.is_file() and not summary.read_bytes().strip():
        click.echo(f"Note: {summary} is empty (a write was cut short); resuming from the checkpoint", err=True)
    return path


def resumed_config(catalog: dict[str, Any], record_dir) -> tuple[RunConfig, list[Any]]:
    """The configuration a run started with, from its checkpoint."""
    from hpplug import checkpoint_files as checkpoint, record

    state = record.classify(record_dir)
    if state == "finished":
        raise HpplugError(f"run {record_dir.name} already ended ({record.status(record_dir)}); nothing to resume")
    if state != "resumable":
        raise HpplugError(f"{record_dir} is not a run record with a checkpoint to resume from; runs write "
                          "one with --checkpoint-every, or when interrupted")
    saved = checkpoint.saved_config(record_dir)
    try:
        config = RunConfig(**saved)
    except TypeError as exc:
        raise HpplugError(f"{record_dir / checkpoint.CHECKPOINT / checkpoint.RUN} does not hold a run "
                          f"configuration ({exc}); the checkpoint cannot be resumed") from None
    core = {k: v for k, v in saved.items() if k not in ("plugins", "plugin_params", "num_processes")}
    return build_config(catalog, config.plugins, config.plugin_params, core)


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


def run_setup(catalog: dict[str, Any], ctx: click.Context, plugin: tuple[str, ...], resume: str | None,
              config_file: str | None, kwargs: dict[str, Any]) -> tuple[RunConfig, list[Any], Any]:
    """What ``hpplug run`` trains, from its parsed options: ``(config, entries, resume_dir)``.
    The one reading of a run's command line (a sweep's packed trials are read with it too)."""
    from hpplug import configfile, record

    reject_extra_args(ctx, catalog)
    raw = _plugin_values(catalog, kwargs)
    plugins = split_plugin_names(plugin) if plugin else None
    if config_file is not None:
        if resume is not None:
            raise HpplugError("--config and --resume: a resumed run takes every option from its checkpoint; "
                              "give one of them")
        given = {k for k in kwargs if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
        layer = configfile.load(config_file, catalog)
        plugins, kwargs, raw = configfile.merge(layer, catalog, kwargs, given, plugins, raw)
    record.env_run_id()  # it may name the folder to resume: checked first
    resume_dir = _resume_dir(resume, kwargs["output_dir"])
    if resume_dir is not None:
        return (*resumed_config(catalog, resume_dir), resume_dir)
    return (*build_config(catalog, plugins or [], raw, kwargs), None)


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
