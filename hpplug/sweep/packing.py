"""Which trials of a sweep train together in one process (``hpplug sweep --pack K``).

A trial can join a pack when its command is hpplug's own ``run`` (as ``trials.command``
builds it: a custom program or a launcher runs alone), its options read as ``hpplug run``
reads them (``hpplug.run_args.run_setup``: the one reading of a run's command line), and
``hpplug.pack.why_not_packable`` accepts it beside the others (same model, data, batch
size and epochs, plugins that support packing). The runner groups trials with this, and
the pack process (``worker``) rebuilds its members with it from the YAML and ``sweep.json``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from hpplug.errors import HpplugError
from hpplug.sweep.state import Trial
from hpplug.sweep.trials import PACK_UNSET

DEFAULT_PACK = 8  # --pack alone
ALONE = "no other trial to pack with"


def run_args(argv: list[str]) -> list[str] | None:
    """The options of hpplug's own ``run`` in a trial's argv; None for anything else."""
    i = 1 if argv[:1] == ["/usr/bin/env"] else 0  # the ${env} macro
    if argv[i:i + 4] == [sys.executable, "-m", "hpplug", "run"]:
        return argv[i + 4:]
    return None


def member(catalog: dict[str, Any], args: list[str], trial: Trial, group: str) -> Any:
    """A trial as a pack member ``(config, entries, run id, resume dir)``: its options read
    as ``hpplug run`` reads them, resumed from its record when that has a checkpoint (as
    ``hpplug run`` under ``WANDB_RUN_ID``), in the sweep's W&B group (``WANDB_RUN_GROUP``)."""
    import click

    from hpplug import record
    from hpplug.cli import run_command
    from hpplug.run_args import run_setup

    # As hpplug run reads WANDB_RUN_ID's record: a finished run is refused, never run again.
    resume = str(trial.record_dir) if record.resumable(trial.record_dir) else None
    try:
        ctx = run_command(catalog).make_context("run", list(args))
    except click.ClickException as exc:
        raise HpplugError(exc.format_message()) from None
    with ctx, _pack_environment():
        params = dict(ctx.params)
        given = params.pop("resume")
        if given is not None:
            raise HpplugError("hpplug sweep sets --resume")
        config, entries, resume_dir = run_setup(catalog, ctx, params.pop("plugin"), resume,
                                                params.pop("config_file"), {k: v for k, v in params.items()
                                                                            if k != "print_config"})
    if config.group is None:
        config.group = group
    return (config, entries, trial.id, resume_dir)


@contextlib.contextmanager
def _pack_environment() -> Iterator[None]:
    """The runner's environment as a pack process has it (``trials.environment``): no outer
    ``WANDB_RUN_ID`` or ``WANDB_RUN_GROUP``, whose members' ids and group are their own."""
    saved = {key: os.environ.pop(key) for key in PACK_UNSET if key in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def member_of(catalog: dict[str, Any], argv: list[str], trial: Trial, group: str) -> Any:
    """The trial whose command is ``argv`` as a pack member (:func:`member`); None when
    the command is not hpplug's own ``run``."""
    args = run_args(argv)
    return None if args is None else member(catalog, args, trial, group)


def groups(trials: list[Trial], size: int, catalog: dict[str, Any], command_of: Callable[[Trial], list[str]],
           group: str) -> list[tuple[list[Trial], str]]:
    """``trials`` in packs of at most ``size``, first come first; each group with why its
    trial runs alone when it is a single one ('' for a pack). ``command_of`` is a trial's
    argv, ``group`` the sweep's W&B group."""
    from hpplug.pack import start_update, why_not_packable

    found: list[list[Any]] = []  # [trials, their member specs, why the first would run alone, their start update]
    for trial in trials:
        if trial.alone is not None:
            found.append([[trial], [], "its pack could not train it", None])  # why: said then, and in sweep.json
            continue
        try:
            spec = member_of(catalog, command_of(trial), trial, group)
        except HpplugError as exc:  # it runs alone, and fails there with this reason in its log
            found.append([[trial], [], str(exc), None])
            continue
        if spec is None:
            found.append([[trial], [], "its command is not hpplug run", None])
            continue
        start = start_update(spec)  # reads its checkpoint's manifest: once per trial
        why = ALONE
        for entry in found:
            pack, specs = entry[0], entry[1]
            if specs and len(pack) < size:
                # Members step in lockstep: a trial resumed at update 300 and a new one do not
                # share a process (run_pack would train them in turns, one signal for both).
                starts = {entry[3], start}
                why = why_not_packable([*specs, spec]) or (
                    f"the trials start from different updates ({', '.join(map(str, sorted(starts)))})"
                    if len(starts) > 1 else "")
                if not why:
                    pack.append(trial)
                    specs.append(spec)
                    break
                if entry[2] == ALONE:  # why the trial waiting there stays alone: this one cannot join it
                    entry[2] = f"trial {trial.number} cannot join it: {why}"
        else:
            problem = why_not_packable([spec])
            found.append([[trial], [] if problem else [spec], problem or why, start])
    return [(pack, "" if len(pack) > 1 else why) for pack, _, why, _ in found]
