"""What a run's command line means: the plugin names, the plugins' values, the resolved
:class:`~hpplug.config.RunConfig` and the record to resume. The one reading of a run's
options: ``hpplug run`` (:mod:`hpplug.cli`), a sweep's packed trials
(:mod:`hpplug.sweep.packing`), ``--config`` files and the Python API all go through it.
Every problem is a one-line :class:`~hpplug.errors.HpplugError`.
"""

from __future__ import annotations

import ast
import os
from dataclasses import fields
from typing import Any

import click
from click.core import ParameterSource

from hpplug.config import OPTION_TYPES, RunConfig
from hpplug.errors import HpplugError
from hpplug.suggest import reject_extra_args

DEFAULTS = RunConfig()


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


def _plugin_values(catalog: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pop ``<plugin>__<param>`` keyword arguments into ``{plugin: {param: raw}}``."""
    raw: dict[str, dict[str, Any]] = {}
    for name, entry in catalog.items():
        if not entry.active:
            continue
        for key in entry.params:
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
