"""A run end to end: Accelerate, the tracker, the plugins, data, model and optimizer set up
in hook order (:func:`prepare`), then the loop (:mod:`hpplug.loop`), and a record that is
closed whatever happens (:func:`run`).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import click
import pluggy
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from hpplug import checkpoint, feed, preflight, step
from hpplug.components import Dataset, Model
from hpplug.config import RunConfig
from hpplug.console import EpochBar
from hpplug.errors import HpplugError, summary_fields
from hpplug.loop import Loop, LoopState, Stopped, final_test, fit
from hpplug.plugin import Plugin, Progress
from hpplug.tracking import Tracker

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr),
}


def make_accelerator(config: RunConfig, tracking: bool) -> Accelerator:
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise HpplugError("--mixed-precision fp16 needs a CUDA GPU; on the CPU use bf16 or no")
    # Accelerate keeps one global state per process; a second run in the same process
    # (tests, notebooks) may ask for another precision.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with="wandb" if tracking else None)
    check_launch(accelerator)
    return accelerator


def check_launch(accelerator: Accelerator) -> None:
    """Several processes that each train alone as rank 0 are a launch mistake, not a run."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and accelerator.num_processes == 1:
        raise HpplugError(
            f"launched as {world} processes (WORLD_SIZE={world}) but each trains alone as rank 0; "
            f"without GPUs set ACCELERATE_USE_CPU=1 (ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            f"--num_processes {world} -m hpplug run ..., or torchrun --nproc_per_node {world} -m hpplug run ...)")


def prepare(config: RunConfig, pm: pluggy.PluginManager, plugins: dict[str, Plugin],
            accelerator: Accelerator, tracker: Tracker, download: bool = True,
            data: feed.RunData | None = None) -> Loop:
    """Fire the set-up hooks in order and build data, model and optimizer. ``data``, when
    given, is used instead of loading the data set (the members of a pack share it)."""
    start_config = config.to_dict()
    config.num_processes = accelerator.num_processes
    pm.hook.hpplug_adjust_config(config=config)
    set_seed(config.seed)
    model_plugin, dataset_plugin = _one(plugins, Model), _one(plugins, Dataset)
    data = data if data is not None else load_data(config, dataset_plugin, accelerator, download)
    # With the real data and the plugins' changes to the config; nothing is allocated if it fails.
    preflight.check_memory(config, model_plugin, data.input_shape, data.num_classes, len(data.train),
                           max(len(data.val or ()), len(data.test or ())), accelerator.device)
    model = build_model(model_plugin, data)
    pm.hook.hpplug_adjust_model(model=model, config=config)
    groups = pm.hook.hpplug_param_groups(model=model, config=config) or model.parameters()
    optimizer = OPTIMIZERS[config.optimizer](groups, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = Progress(update=0, epoch=0, updates_per_epoch=math.ceil(len(data.train) / config.global_batch_size),
                        epochs=config.epochs)
    state = LoopState(progress, accelerator.device, is_main=accelerator.is_main_process)
    loop = Loop(config, accelerator, pm.hook, plugins, data, model, optimizer, tracker, state,
                base_lrs=[g["lr"] for g in optimizer.param_groups],
                batch_generator=torch.Generator(device=accelerator.device), start_config=start_config,
                every=checkpoint.Every.parse(config.checkpoint_every))
    loop.stepper = step.stepper(loop)
    return loop


def _one(plugins: dict[str, Plugin], kind: type) -> Any:
    return next(p for p in plugins.values() if isinstance(p, kind))


def load_data(config: RunConfig, dataset: Dataset, accelerator: Accelerator, download: bool) -> feed.RunData:
    """The data set's splits, held in memory or streamed (``--loader``), with a validation split."""
    from hpplug.selection import as_splits

    with accelerator.main_process_first():  # the first process downloads, the others read
        splits = as_splits(dataset.load(Path(config.data_root), download), f"--dataset {config.dataset}")
    return feed.prepare(splits, loader=config.loader, workers=config.workers, val_fraction=config.val_fraction,
                        device=accelerator.device)


def build_model(plugin: Model, data: feed.RunData) -> torch.nn.Module:
    """The model plugin's module, checked on two real inputs: it must return ``[batch, classes]``."""
    model = plugin.build(tuple(data.input_shape), data.num_classes)
    if not isinstance(model, torch.nn.Module):
        raise HpplugError(f"--model {type(plugin).__name__} returned a {type(model).__name__}, not a torch.nn.Module")
    x, _ = next(data.train.batches([torch.arange(min(2, len(data.train)))], torch.device("cpu")))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.train.inputs(x))
    except Exception as exc:  # noqa: BLE001 - whatever the model raises on the data's inputs
        raise HpplugError(f"the model cannot take this data set's inputs {list(x.shape)}: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}") from None
    finally:
        model.train(was_training)
    expected = [len(x), data.num_classes]
    if not isinstance(out, torch.Tensor) or list(out.shape) != expected:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise HpplugError(f"the model returns {got} for inputs {list(x.shape)}; hpplug needs logits "
                          f"[batch, {data.num_classes}] ([batch, classes]: the data set has {data.num_classes} classes)")
    return model


@contextlib.contextmanager
def imported_meanwhile(module: str | None) -> Iterator[None]:
    """Import ``module`` in a thread while the block runs, and wait for it at the end.

    Used around W&B's start, which mostly waits for its service process (~0.4 s): the
    thread imports ``torch._dynamo`` meanwhile, which every optimizer step imports
    (``torch.optim``'s ``_use_grad_for_differentiable``; ~1 s). The two import disjoint
    sets of modules, so they never wait on each other's import locks. A failure is left
    to the import that needs the module, where it is raised as without this."""
    if module is None or module in sys.modules:
        yield
        return

    def load() -> None:
        try:
            importlib.import_module(module)
        except BaseException:  # noqa: BLE001 - the real import raises it again where it is needed
            pass

    thread = threading.Thread(target=load, name=f"import {module}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


@dataclass
class RunResult:
    run_id: str
    status: str
    summary: dict[str, Any]
    record_dir: str
    sync_hint: str | None
    signum: int | None = None
    is_main: bool = True


def _close_processes(accelerator: Accelerator) -> None:
    """After a run that ended in step on every process: wait for all, then take the process
    group down. A process that exits while another still holds the group open can abort in
    gloo's threads ("terminate called without an active exception")."""
    import torch.distributed as dist

    if accelerator.num_processes > 1 and dist.is_initialized():
        accelerator.wait_for_everyone()
        dist.destroy_process_group()


def _broadcast(accelerator: Accelerator, value: Any) -> Any:
    """Rank 0's value on every process (the run id, the sweep's config)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def wandb_config(config: RunConfig, entries: list[Any]) -> dict[str, Any]:
    """What a run records as its configuration (``config.json``, and W&B's config with the
    settings apart: :func:`hpplug.wandb_run.wandb_view`): every option by its flat name, the
    versions it ran with, and each plugin's distribution and version."""
    import platform
    from importlib.metadata import version

    import accelerate

    from hpplug import __version__

    return {**config.flat(),
            "versions": {"hpplug": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__,
                         "wandb": version("wandb"), "python": platform.python_version()},
            "plugin_versions": {e.name: f"{e.distribution}=={e.version}" for e in entries}}


def _summary(loop: Loop | None, final: dict[str, Any]) -> dict[str, Any]:
    """Final values: the last epoch's metrics (also when stopped mid-epoch) and run totals."""
    summary = dict(final or (loop.state.history[-1] if loop is not None and loop.state.history else {}))
    if loop is not None:
        s = loop.state
        summary.update({"updates": s.progress.update, "epochs_done": s.progress.epoch})
        if s.stop_reason:
            summary["stop_reason"] = s.stop_reason
        if s.train_time > 0:
            summary.update({"train/samples_per_s": s.train_samples / s.train_time, "train/time_s": s.train_time})
        best = [m["val/accuracy"] for m in s.history if "val/accuracy" in m]
        if best:
            summary["best/val/accuracy"] = max(best)
    return summary


def run(config: RunConfig, entries: list[Any], *, download: bool = True, show_progress: bool = True,
        apply_overrides: Callable[[RunConfig, dict[str, Any]], Any] | None = None,
        resume_dir: str | Path | None = None) -> RunResult:
    """Train one run end to end; the local record and W&B are closed whatever happens.

    ``apply_overrides`` merges what W&B says the config is (a sweep's locked values) into
    ``config`` before anything is built. ``resume_dir`` continues a run from its checkpoint.
    """
    from hpplug import manager, notices, record
    from hpplug.config import with_environment
    from hpplug.record import new_run_id
    from hpplug.tracking import opening_line, resolve_mode

    notices.new_run()
    mode = resolve_mode(config.wandb_mode)
    with_environment(config, os.environ)
    accelerator = make_accelerator(config, tracking=mode != "disabled")
    if resume_dir is not None:
        run_id = Path(resume_dir).name
        config.output_dir = str(Path(resume_dir).parent)
    else:
        run_id = _broadcast(accelerator, record.env_run_id() or new_run_id())
    tracker = Tracker(accelerator, mode, run_id, config.output_dir)
    status, final, loop, signum = "failed", {}, None, None
    try:  # from here on, a run whose record was opened ends with its summary and closing lines
        with imported_meanwhile("torch._dynamo" if mode != "disabled" else None):
            tracker.start(config.project, wandb_config(config, entries), resuming=resume_dir is not None)
        if apply_overrides is not None and resume_dir is None:
            overrides = _broadcast(accelerator, tracker.wandb_config())
            config, entries = apply_overrides(config, overrides)
            tracker.write_config(wandb_config(config, entries))
        if accelerator.is_main_process:  # the values the run trains with, a sweep's included
            config.num_processes = accelerator.num_processes
            click.echo(opening_line(run_id, config, mode, resuming=resume_dir is not None))
        pm, plugins = manager.build(entries, config.plugin_params)
        loop = prepare(config, pm, plugins, accelerator, tracker, download=download)
        if resume_dir is not None:
            checkpoint.restore(loop, Path(resume_dir))
        tracker.update_config({"effective_lr": config.lr, "global_batch_size": config.global_batch_size,
                               "num_processes": config.num_processes})
        enabled = show_progress and accelerator.is_main_process
        with checkpoint.StopRequests() as loop.stop:
            final = fit(loop, EpochBar.factory(config.global_batch_size, enabled=enabled))
            final = {**final, **final_test(loop)}
        status = "stopped" if loop.state.stop_reason else "finished"
    except Stopped as stop:
        status, signum = stop.reason, stop.signum
        if stop.reason == "stopped":
            loop.state.stop_reason = f"on request (signal {signum}, e.g. a sweep's early termination)"
        if stop.reason == "interrupted":
            loop.save_checkpoint()
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary = _summary(loop, final)
        failure = sys.exc_info()[1]  # only an exception leaves the status failed: this one
        if status == "failed" and failure is not None:
            summary.update(summary_fields(failure))
        hint = tracker.finish(summary, status)
    _close_processes(accelerator)
    return RunResult(run_id, status, summary, str(tracker.record_dir), hint, signum,
                     accelerator.is_main_process)
