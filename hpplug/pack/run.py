"""``run_pack``: several trials trained at once, each ending as a complete run.

Set-up follows ``hpplug.engine.run`` per member (record and W&B run, plugins, seed, model,
optimizer, checkpoint), except that the data set is loaded once and shared. Then one
:class:`~hpplug.pack.packed.Pack` trains them (:mod:`hpplug.pack.train`) under one set of
signal handlers: SIGINT or SIGTERM checkpoints every member and marks it interrupted,
SIGUSR1 stops them all. A member whose plugin fails ends ``failed`` alone; a failure of
what they share ends all of them ``failed``, each run's summary naming the error.

Members resumed from checkpoints saved at different updates (a kill between two members'
saves) cannot step in lockstep: each set at one update trains as a pack of its own, in turn;
after a signal ends one set, the later ones are left untouched and reported interrupted.
(``hpplug sweep --pack`` groups only trials that start at one update.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from hpplug import checkpoint, engine, notices
from hpplug.engine import RunResult
from hpplug.errors import HpplugError, one_line
from hpplug.loop import Stopped
from hpplug.pack.member import Member, one_working_set
from hpplug.pack.packed import Pack
from hpplug.pack.support import SHARED, MemberSpec, PackRefused, start_update, why_not_packable
from hpplug.pack.train import fit


def run_pack(members: Sequence[MemberSpec], *, show_progress: bool = False, download: bool = True) -> list[RunResult]:
    """Train ``members`` (each ``(config, entries, run_id, resume_dir)``, as ``engine.run``
    takes them) as one pack; one ``RunResult`` per member, in order. Trials that
    :func:`~hpplug.pack.support.why_not_packable` refuses are an ``HpplugError``."""
    problem = why_not_packable(members)
    if problem is not None:
        raise HpplugError(f"these trials cannot train as one pack: {problem}")
    notices.new_run()  # a plugin's warning is said once per pack
    results: list[RunResult | None] = [None] * len(members)
    starts = [start_update(m) for m in members]  # each reads its checkpoint's manifest
    order = sorted(range(len(members)), key=starts.__getitem__)
    signum: int | None = None
    for _, same in groupby(order, key=starts.__getitem__):
        indices = list(same)
        if signum is not None:  # a signal ended the set before: the rest wait, untouched
            for i in indices:
                config, _, run_id, resume = members[i]
                results[i] = RunResult(run_id, "interrupted", {}, str(resume or Path(config.output_dir) / run_id),
                                       None, signum)
            continue
        for i, result in zip(indices, _train([members[i] for i in indices], show_progress, download)):
            results[i] = result
            signum = signum or result.signum
    return results  # type: ignore[return-value]


def _train(specs: list[MemberSpec], show_progress: bool, download: bool) -> list[RunResult]:
    accelerator = engine.make_accelerator(specs[0][0], tracking=False)  # W&B: each member's own run
    if accelerator.num_processes > 1:
        raise HpplugError("a pack trains in one process: run `hpplug sweep --pack` without accelerate launch or "
                          "torchrun")
    members = [Member(spec, accelerator.device) for spec in specs]
    # The members' W&B runs open while torch._dynamo is imported (as engine.run does around its one).
    with one_working_set(), engine.imported_meanwhile("torch._dynamo"):
        for m in members:
            try:
                m.open()
            except Exception as exc:  # noqa: BLE001 - refused before its record was opened: nothing written
                m.finish("failed", exc)
    pack: Pack | None = None
    alive = [m for m in members if m.result is None]
    try:
        if alive:
            pack = _setup(alive, accelerator, download)
        if pack is not None:
            with checkpoint.StopRequests() as pack.stop:
                fit(pack, show_progress)
    except Stopped as stop:
        _stopped(pack, stop)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        for m in members:
            if m.result is None:
                m.finish("interrupted")
        raise
    except Exception as exc:  # noqa: BLE001 - what the members share failed: each run records it
        for m in members:
            if m.result is None:  # one that had failed on its own keeps its own error
                m.finish(*(m.exit or ("failed", exc)))
    return [m.result for m in members]  # type: ignore[misc]


def _stopped(pack: Pack, stop: Stopped) -> None:
    """A signal: every member checkpoints (interrupted) or stops, as ``engine.run`` does."""
    for m in pack.members:
        m.signum = stop.signum
        if stop.reason == "stopped":
            m.loop.state.stop_reason = f"on request (signal {stop.signum}, e.g. a sweep's early termination)"
        else:
            with pack.own(m):
                m.save()
        m.leave(stop.reason)
    pack.settle()


def _setup(members: list[Member], accelerator: Any, download: bool) -> Pack | None:
    """Each member as ``engine.run`` sets it up, on one copy of the data; a member whose set-up
    fails (its plugin, its checkpoint) ends alone."""
    for m in members:
        try:
            m.build_plugins()
        except Exception as exc:  # noqa: BLE001
            m.leave("failed", exc)
    alive = _settled(members)
    if not alive:
        return None
    first = alive[0]
    shared = {name: getattr(first.config, name) for name in SHARED}
    set_seed(first.config.seed)
    before = torch.get_rng_state()
    data = engine.load_data(first.config, first.dataset, accelerator, download)
    if not torch.equal(before, torch.get_rng_state()):
        raise PackRefused("the data set draws from torch's global random generator while it loads, so a packed "
                          "trial would not start as it does alone")
    for m in alive:
        try:
            m.prepare(accelerator, data)
        except torch.OutOfMemoryError as exc:  # alone it may fit: not the trial's fault
            m.leave("failed", PackRefused(f"its model does not fit in memory beside the others': {one_line(exc)}"))
        except Exception as exc:  # noqa: BLE001
            m.leave("failed", exc)
    alive = _settled(alive)
    if not alive:
        return None
    for m in alive:
        changed = [name for name, value in shared.items() if getattr(m.config, name) != value]
        if changed:
            raise PackRefused(f"a plugin's hpplug_adjust_config changed {changed[0]} of trial {m.run_id}, which the "
                              "trials of a pack share")
    if len({(m.loop.progress.update, m.loop.progress.epoch) for m in alive}) > 1:
        raise PackRefused("the trials' checkpoints are at different updates")
    precision = first.config.mixed_precision
    device = accelerator.device.type

    def autocast() -> Any:
        return torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    try:
        return Pack(alive, data, accelerator, autocast)
    except torch.OutOfMemoryError as exc:  # K copies of the weights: alone, each may fit
        raise PackRefused(f"the trials' models do not fit in memory together: {one_line(exc)}") from None


def _settled(members: list[Member]) -> list[Member]:
    """Close the runs of the members whose set-up failed; the others."""
    for m in members:
        if m.exit is not None:
            m.finish(*m.exit)
    return [m for m in members if m.exit is None]
