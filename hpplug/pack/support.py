"""Which trials can share a pack, and which plugins support packing.

A pack trains its members in lockstep as one vectorized model, so they agree on everything
that shapes the model, the data and the updates (:data:`SHARED`, the model's and the data
set's parameters, the plugins that change the model), and every plugin of every member
supports packing. A packable plugin's hooks are called once per member with that member's
own arguments (its progress, its batch, its model: a module whose weights are views of the
member's slice of the stacked weights) and give what they give alone: they draw randomness
from ``batch.generator`` only, change weights and gradients in place (a hook that replaces
one instead, ``p.data = ...``, makes the pack stack them all again: correct, but a copy of
every member's weights), read the weights through the model they are given (a tensor of
them kept from an earlier hook goes stale when the pack stacks again, e.g. when a member
leaves), and do not drive the optimizer step (``hpplug_optimizer_step`` is never packable:
``step.recompute()`` needs a model of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpplug.discovery import hooks_of
from hpplug.errors import HpplugError

# A file a sweep runner writes into a member's record to stop it early (hpplug.pack.member).
STOP_REQUEST = "stop-request"
# In a member's summary: it failed because the pack could not train it (PackRefused).
REFUSED = "pack/refused"


class PackRefused(HpplugError):
    """What a pack finds only once its members are built or training (their models'
    layers, their optimizer groups, a plugin's change): it cannot train them as one. The
    trial is not at fault: a sweep runner trains it alone next (its summary says
    :data:`REFUSED`)."""

# (config, entries, run id, record folder to resume or None): what hpplug.engine.run takes.
if TYPE_CHECKING:
    from hpplug.config import RunConfig
    from hpplug.discovery import PluginEntry
    from hpplug.plugin_cache import PluginInfo

    MemberSpec = tuple[RunConfig, list[PluginEntry], str, str | Path | None]
else:
    MemberSpec = tuple

# Settings every member shares: they shape the model, the data, the batches and the number
# of updates. Everything else (LR, momentum, seed, plugins' values, logging) is per member.
SHARED = ("model", "dataset", "data_root", "val_fraction", "loader", "workers", "batch_size", "grad_accum",
          "epochs", "optimizer", "eval_batch_size", "mixed_precision")

def start_update(spec: MemberSpec) -> int:
    """The update a member starts from: its checkpoint's, 0 for a new run (-1 when the
    checkpoint cannot be read: its own set-up then fails with the reason). Members step in
    lockstep, so only those starting at one update train together."""
    if spec[3] is None:
        return 0
    from hpplug import checkpoint_files as checkpoint

    try:
        return int(checkpoint.latest(Path(spec[3])).manifest.get("update", -1))
    except HpplugError:
        return -1


def packable(cls: type) -> bool:
    """Whether a plugin class supports packing: it declares it (``Plugin.packable``), or it
    is a data set without hooks (it is only loaded, once per pack). The built-in plugins
    declare it like any third party's. (Read by kind, not class: the metadata cache asks
    this of every plugin, and importing hpplug.components would import torch.)"""
    hooks = hooks_of(cls)
    if "hpplug_optimizer_step" in hooks:
        return False
    return getattr(cls, "packable", False) is True or (getattr(cls, "kind", None) == "dataset" and not hooks)


def _why(info: PluginInfo | None) -> str:
    """What makes a plugin unpackable, when it is more than not declaring it."""
    if info is not None and "hpplug_optimizer_step" in info.hooks:
        return (": it drives the optimizer step (hpplug_optimizer_step), which a pack takes once for all its "
                "trials")
    return ""


def _differ(what: str, values: Sequence[Any]) -> str | None:
    shown = list(dict.fromkeys(str(v) for v in values))
    return f"the trials differ in {what} ({', '.join(shown[:4])}): a pack shares it" if len(shown) > 1 else None


def why_not_packable(members: Sequence[MemberSpec]) -> str | None:
    """One line saying why these trials cannot train as one pack, or None when they can."""
    if not members:
        return "there are no trials to pack"
    for config, entries, _, _ in members:
        for entry in entries:  # what the class says, or the metadata cache for it (a runner imports no plugin)
            if entry.info is None or not entry.info.packable:
                return f"plugin {entry.name} ({entry.distribution}) does not support packing{_why(entry.info)}"
        if config.mixed_precision == "fp16":
            return "fp16 scales each run's loss on its own: a pack trains in full precision (no) or bf16"
    configs = [m[0] for m in members]
    for name in SHARED:
        problem = _differ(name, [getattr(c, name) for c in configs])
        if problem:
            return problem
    # build_config puts the model's entry, then the data set's, after the --plugin ones.
    for what, position in (("model", -2), ("data set", -1)):
        names = [entries[position].name for _, entries, _, _ in members]
        problem = _differ(f"the {what}'s parameters", [sorted(c.plugin_params.get(n, {}).items())
                                                       for c, n in zip(configs, names)])
        if problem:
            return problem
    problem = _differ("the plugins that change the model", [
        [e.name for e in entries if "hpplug_adjust_model" in e.hooks] for _, entries, _, _ in members])
    if problem:
        return problem
    records = [Path(resume) if resume is not None else Path(config.output_dir) / run_id
               for config, _, run_id, resume in members]
    seen: set[Path] = set()
    for path in records:
        if path.absolute() in seen:
            return f"two trials write the same record {path}: each needs its own run id"
        seen.add(path.absolute())
    return None
