"""Every hook hpplug calls, in the order a run fires them.

Implementations are methods of a ``hpplug.Plugin`` subclass marked ``@hpplug.hookimpl``.
Hooks run in the order the plugins were named on the command line; ``tryfirst`` /
``trylast`` on the marker move one to the front or back (``normalize`` is ``trylast``).
Hooks marked *first result wins* stop at the first implementation that returns non-None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from hpplug.config import RunConfig
    from hpplug.plugin import Batch, Progress

hookspec = pluggy.HookspecMarker("hpplug")
hookimpl = pluggy.HookimplMarker("hpplug")


@hookspec
def hpplug_adjust_config(config: RunConfig) -> None:
    """Once, before data, model or optimizer exist: change ``config`` in place.

    For batch-size and LR policies. ``config.num_processes`` and ``config.grad_accum`` are
    final here, so ``config.global_batch_size`` is what the run will really use.
    """


@hookspec
def hpplug_adjust_model(model: torch.nn.Module, config: RunConfig) -> None:
    """Once, after the model is built and before the optimizer exists: change it in place.

    For layers a method inserts (dropout). Parameters added here are trained.
    """


@hookspec(firstresult=True)
def hpplug_param_groups(model: torch.nn.Module, config: RunConfig) -> list[dict[str, Any]] | None:
    """Once, when the optimizer is built: return its parameter groups, or None.

    First result wins (weight decay splits decayed and undecayed parameters). Without one,
    the optimizer gets ``model.parameters()``. Groups may carry their own options.
    """


@hookspec
def hpplug_lr_factor(progress: Progress, base_lr: float) -> float | None:
    """Before every optimizer update: a multiplier of ``base_lr`` for that update, or None.

    ``base_lr`` is ``config.lr`` after ``hpplug_adjust_config`` (what a floor such as
    ``eta_min`` is relative to). Every factor returned is multiplied together, so a warmup
    composes with a decay schedule in any order. Must depend on ``progress`` and the plugin's own state only:
    that keeps the LR identical on any number of processes and after a resume.
    """


@hookspec
def hpplug_transform_batch(batch: Batch, progress: Progress) -> None:
    """For every batch on the device, training and evaluation: replace ``batch.x``/``batch.y``.

    Check ``batch.train``: augmentations act in training only, normalization always. Draw
    randomness from ``batch.generator`` so runs are reproducible. Runs in command-line
    order; implementations marked ``trylast`` run after the others.
    """


@hookspec(firstresult=True)
def hpplug_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """For every training batch: the loss per sample (shape ``[n]``), or None.

    First result wins (label smoothing). Without one, plain cross-entropy. hpplug reduces
    it so that the gradient is the mean over the global batch on any number of processes.
    """


@hookspec
def hpplug_before_optimizer_step(model: torch.nn.Module, progress: Progress) -> None:
    """After the backward pass, before each optimizer update: gradients are ready here."""


@hookspec
def hpplug_after_optimizer_step(model: torch.nn.Module, progress: Progress) -> None:
    """After each optimizer update; ``progress.update`` already counts it."""


@hookspec
def hpplug_evaluation_end(metrics: dict[str, float], progress: Progress) -> None:
    """After each evaluation, on every process, with the global metrics (read-only).

    Fires after each epoch's validation (``val/loss``, ``val/accuracy``, ``val/samples``
    beside the epoch's ``train/*``), and once after the test set at the end of training
    (``test/loss``, ``test/accuracy``, ``test/samples``). A run without a validation split
    has no per-epoch evaluation.
    """


@hookspec
def hpplug_epoch_end(metrics: dict[str, float], progress: Progress) -> dict[str, float] | None:
    """After each epoch's training and evaluation: return extra metrics to log, or None."""
