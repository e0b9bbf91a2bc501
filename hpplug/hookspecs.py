"""Every hook hpplug calls, in the order a run fires them.

These docstrings are the hook reference: ``docs/plugins.md`` is generated from them
(``python -m hpplug.hookdocs``) and a test fails when the two differ. Each says when the hook
fires, what each argument is, what it returns and how several implementations compose.

Hook order (``ORDER`` below is the same text, printed in the guide)::

    hpplug_adjust_config                                 once
    data, model -> hpplug_adjust_model                   once
    hpplug_param_groups -> optimizer                     once
    hpplug_train_start                                   every start and resume of training
    for each epoch:
        hpplug_epoch_start
        for each optimizer update:
            hpplug_lr_factor
            for each micro-batch: hpplug_transform_batch -> forward -> hpplug_loss -> backward
            hpplug_before_optimizer_step -> hpplug_optimizer_step -> hpplug_after_optimizer_step
            every --log-every updates: hpplug_update_metrics -> logged
        hpplug_evaluation_start -> validation -> hpplug_evaluation_end
        hpplug_epoch_end -> logged -> hpplug_should_stop
    hpplug_train_end                                     once, when training is complete
    hpplug_evaluation_start -> test -> hpplug_evaluation_end
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import pluggy

if TYPE_CHECKING:
    import torch

    from hpplug.config import RunConfig
    from hpplug.plugin import Batch, Progress
    from hpplug.step import Step

hookspec = pluggy.HookspecMarker("hpplug")
hookimpl = pluggy.HookimplMarker("hpplug")

ORDER = textwrap.dedent(__doc__.split("::\n\n", 1)[1]).strip() + "\n"


# --- set-up ------------------------------------------------------------------------------


@hookspec
def hpplug_adjust_config(config: RunConfig) -> None:
    """Change the run's configuration before anything is built.

    - **When**: once, before the data, the model and the optimizer exist.
    - **Arguments**: `config`, the run's `RunConfig` (`lr`, `batch_size`, `epochs`,
      `optimizer`, ...). `config.num_processes` and `config.grad_accum` are final, so
      `config.global_batch_size` is what the run will really use.
    - **Returns**: nothing; change `config` in place. Every value set must still be valid for
      its option (`config.lr = nan` or `config.batch_size = 64.0` fails the run).
    - **Composition**: every implementation runs, in command-line order, each seeing the
      changes of the ones before. For batch-size and LR policies (the linear scaling rule).
      `base_lr` in `hpplug_lr_factor` is `config.lr` after this hook.
    """


@hookspec
def hpplug_adjust_model(model: torch.nn.Module, config: RunConfig) -> None:
    """Change the model before the optimizer exists.

    - **When**: once, after the model is built and before the optimizer exists.
    - **Arguments**: `model`, the `torch.nn.Module`, still on the CPU; `config`, the
      `RunConfig` (read-only from here on).
    - **Returns**: nothing; change `model` in place. Layers added here are trained and moved
      to the device with the rest (`dropout` inserts `nn.Dropout` layers).
    - **Composition**: every implementation runs, in command-line order.
    """


@hookspec(firstresult=True)
def hpplug_param_groups(model: torch.nn.Module, config: RunConfig) -> list[dict[str, Any]] | None:
    """The optimizer's parameter groups.

    - **When**: once, when the optimizer is built.
    - **Arguments**: `model`, with every change of `hpplug_adjust_model`; `config`.
    - **Returns**: a list of dicts such as
      `[{"params": decayed, "weight_decay": 5e-4}, {"params": others, "weight_decay": 0.0}]`,
      or `None`. A group may carry its own `lr`: that is its base LR, which the LR factors
      then scale like the others. Each group's `params` are the model's own parameters, none
      in two groups; `lr`, `weight_decay`, `momentum`, `dampening` and `eps` are finite
      numbers >= 0.
    - **Composition**: first result wins; without one the optimizer gets
      `model.parameters()`. Two plugins implementing it are refused before training unless
      all but one declare `composable = True`.
    """


# --- training ----------------------------------------------------------------------------


@hookspec
def hpplug_train_start(model: torch.nn.Module, progress: Progress, config: RunConfig) -> None:
    """Training (re)starts: set up what the plugin changes during training.

    - **When**: once per process each time training starts: at the start of a run, and again
      when a run is resumed (after every plugin's `load_state_dict`), before the first
      epoch it trains. Not fired when a resumed run had already finished training.
    - **Arguments**: `model`, the module being trained, on its device (never a
      `DistributedDataParallel` wrapper); `progress`, where training (re)starts; `config`
      (read-only).
    - **Returns**: nothing. Raise `hpplug.HpplugError` for a setting the plugin cannot run
      with (`sam` under fp16): the run stops with that one line before training.
    - **Composition**: every implementation runs, in command-line order. Undo in
      `hpplug_train_end` what must not outlive training.
    """


@hookspec
def hpplug_epoch_start(progress: Progress) -> None:
    """An epoch's training begins.

    - **When**: before each epoch's first update, and when a run resumed in the middle of
      an epoch continues it.
    - **Arguments**: `progress`, whose `epoch` is the epoch about to train (0 for the first).
    - **Returns**: nothing.
    - **Composition**: every implementation runs, in command-line order.
    """


@hookspec
def hpplug_lr_factor(progress: Progress, base_lr: float) -> float | None:
    """A multiplier of the base learning rate for the next update.

    - **When**: before every optimizer update.
    - **Arguments**: `progress` (`progress.update` is the number of updates already taken,
      so the factor is for update `progress.update + 1`); `base_lr`, `config.lr` after
      `hpplug_adjust_config` (what an absolute floor such as `eta_min` is relative to).
    - **Returns**: a float, the multiplier of each parameter group's base LR for that update,
      or `None`. It must be a finite number >= 0 (not a string, a tensor, NaN or infinity).
    - **Composition**: every factor returned is multiplied together, so a warmup composes
      with a decay schedule in any order. A hook wrapper (`@hookimpl(wrapper=True)`) sees the
      list of the others' factors and may replace it (`swa` holds its own LR this way). The
      LR must be a function of `progress` and the plugin's own state only: that keeps it
      identical on any number of processes and after a resume. Schedules claim
      `slot = "lr-schedule"`; warmups add `composable = True`.
    """


@hookspec
def hpplug_transform_batch(batch: Batch, progress: Progress) -> None:
    """Change a batch on its way to the model.

    - **When**: for every batch, in training (every micro-batch of every process) and in
      evaluation.
    - **Arguments**: `batch`, a `Batch`; `progress`.
    - **Returns**: nothing; replace `batch.x`, and `batch.y` if the method changes labels.
      `batch.x` stays floating-point with one row per label; `batch.y` is either class
      indices `[n]` or class probabilities `[n, batch.num_classes]` (soft targets: mixup,
      cutmix). `batch.soft_targets()` gives the probabilities whichever form `y` is in.
    - **Composition**: every implementation runs, in command-line order, each one seeing
      the result of the one before; `trylast` ones run after the others. Check
      `batch.train`: augmentations act in training only, normalization always. Draw
      randomness from `batch.generator` so runs are reproducible; it lives on the
      accelerator's device, which is not always `batch.x`'s, so draw on
      `batch.generator.device` and move the result to `batch.x.device`.
    """


@hookspec(firstresult=True)
def hpplug_loss(logits: torch.Tensor, targets: torch.Tensor, batch: Batch) -> torch.Tensor | None:
    """The training loss of each sample.

    - **When**: for every training micro-batch, after the forward pass (and again for every
      micro-batch that `step.recompute()` runs).
    - **Arguments**: `logits` `[n, classes]` (bf16 or fp16 under mixed precision: compute in
      float if it matters); `targets`, `batch.y` after every transform: class indices `[n]`
      or class probabilities `[n, classes]`; `batch`, the `Batch` itself (read its `extras`).
    - **Returns**: the loss per sample, a floating-point tensor of shape `[n]`
      (`reduction="none"`) computed from `logits` (so that it has a gradient), or `None`.
      Accept both forms of `targets`: `F.cross_entropy` takes either.
    - **Composition**: first result wins; without one, plain cross-entropy (which takes soft
      targets, so mixup composes with `label-smoothing`). Two plugins implementing it are
      refused before training unless all but one declare `composable = True`. hpplug
      reduces the per-sample losses so that the gradient is the mean over the global batch
      on any number of processes and micro-batches.
    """


@hookspec
def hpplug_before_optimizer_step(model: torch.nn.Module, progress: Progress) -> None:
    """The update's gradients are complete: read or change them.

    - **When**: after the backward pass of the last micro-batch of an update, before the
      optimizer step. The gradients are summed over micro-batches, averaged over processes
      and, under fp16, already unscaled: they are the true gradients.
    - **Arguments**: `model`, the module being trained; `progress`, with `progress.update`
      not yet counting this update.
    - **Returns**: nothing.
    - **Composition**: every implementation runs, in command-line order (`grad-clip`
      clips here).
    """


@hookspec(firstresult=True)
def hpplug_optimizer_step(step: Step, progress: Progress) -> bool | None:
    """Take the optimizer step yourself.

    - **When**: once per update, after `hpplug_before_optimizer_step`.
    - **Arguments**: `step`, a `Step`: `step.model`, `step.optimizer` (the run's optimizer,
      whatever `--optimizer` is), `step.step()` (one optimizer step on the current
      gradients, through the fp16 grad scaler when there is one), `step.zero_grad()` and
      `step.recompute()` (forward and backward again over this update's micro-batches, the
      same inputs after every transform, adding to the gradients, synchronized over
      processes like the first pass; returns the mean loss); `progress`.
    - **Returns**: `True` once the plugin has stepped, or `None` to leave the step to
      hpplug (`step.step()`). hpplug zeroes the gradients afterwards either way.
    - **Composition**: first result wins: one plugin drives the step (`sam`: perturb,
      `step.recompute()`, restore, `step.step()`). Two plugins implementing it are refused
      before training unless all but one declare `composable = True`.
    """


@hookspec
def hpplug_after_optimizer_step(model: torch.nn.Module, progress: Progress) -> None:
    """After each optimizer update.

    - **When**: after each optimizer update and after the gradients are zeroed.
    - **Arguments**: `model`, the module being trained; `progress`, whose `update` already
      counts this update.
    - **Returns**: nothing.
    - **Composition**: every implementation runs, in command-line order. For weight averages
      (`ema`, `swa`) and constraints applied to the weights.
    """


@hookspec
def hpplug_update_metrics(progress: Progress) -> dict[str, float] | None:
    """Metrics of the plugin's own, logged with the training loss.

    - **When**: every `--log-every` updates, on every process, when hpplug logs
      `train/loss` and `lr`.
    - **Arguments**: `progress`, whose `update` counts the last update.
    - **Returns**: a dict of metric name to number (`{"grad-clip/norm": 1.3}`), or `None`.
      Names are the plugin's own (`<plugin>/<metric>`): one that hpplug logs itself
      (`train/`, `val/`, `test/`, `best/`, `lr`, `epoch`, ...) fails the run. Values are
      numbers (`float(...)`, `.item()`), summarized as the plugin likes (the mean since the
      last call, the last value). The main process's values are logged.
    - **Composition**: every implementation runs; the dicts are merged.
    """


# --- evaluation and the end of an epoch --------------------------------------------------


@hookspec
def hpplug_evaluation_start(model: torch.nn.Module, split: str, progress: Progress) -> None:
    """An evaluation begins: swap in the weights to evaluate.

    - **When**: before each evaluation on the validation split (after each epoch's training)
      and before the test split at the end, on every process.
    - **Arguments**: `model`, the module being trained (in `eval()` mode already); `split`,
      `"val"` or `"test"`; `progress`.
    - **Returns**: nothing. Change the weights in place (`ema` swaps in its averages) and
      put them back in `hpplug_evaluation_end`.
    - **Composition**: every implementation runs, in command-line order.
    """


@hookspec
def hpplug_evaluation_end(metrics: Mapping[str, float], model: torch.nn.Module, split: str,
                          progress: Progress) -> None:
    """An evaluation ended: read its metrics, restore the weights.

    - **When**: after each evaluation started by `hpplug_evaluation_start`, on every process.
    - **Arguments**: `metrics`, reduced over all processes, read-only: after validation the
      epoch's (`train/loss`, `train/accuracy`, `val/loss`, `val/accuracy`, `lr`, ...), after
      the test `test/loss`, `test/accuracy`, `test/samples`; `model`; `split`, `"val"` or
      `"test"`; `progress`, whose `epoch` is still the epoch just evaluated (0 for the first).
    - **Returns**: nothing. Report metrics of the plugin's own from `hpplug_epoch_end`.
    - **Composition**: every implementation runs, in command-line order.
    """


@hookspec
def hpplug_epoch_end(metrics: Mapping[str, float], progress: Progress) -> dict[str, float] | None:
    """Extra metrics of the epoch.

    - **When**: after each epoch's training and evaluation, just before its metrics are
      logged.
    - **Arguments**: `metrics`, read-only, as in `hpplug_evaluation_end`; `progress`, whose
      `epoch` now counts the epoch just finished (1 after the first).
    - **Returns**: a dict of extra metrics (`{"noise/std": 0.1}`) or `None`: string names,
      number values (`float(...)` or `.item()`, not tensors). The extras may not replace what
      hpplug logs, which a sweep may optimize: a name already in `metrics`, `epoch`, `lr`,
      `step`, `status`, ..., or one starting with `train/`, `test/`, `val/` or `best/` fails
      the run.
    - **Composition**: every implementation runs; all returned dicts are merged into the
      epoch's metrics, logged to W&B and to the run record at step `progress.update`.
      Prefix names with the plugin's name so that two plugins cannot overwrite each other's.
    """


@hookspec
def hpplug_should_stop(metrics: Mapping[str, float], progress: Progress) -> str | None:
    """Ask the run to stop after this epoch.

    - **When**: once after each epoch, after its metrics are logged, on every process.
    - **Arguments**: `metrics`, read-only: the epoch's, extras of `hpplug_epoch_end`
      included; `progress`, whose `epoch` counts the epoch just finished.
    - **Returns**: the reason to stop, one line for people (`"val/accuracy has not improved
      for 3 epochs"`), or `None` to go on.
    - **Composition**: every implementation runs; one reason on any process stops the run,
      agreed by all processes. Training ends (`hpplug_train_end`), the test split is
      evaluated, and the run ends with status `stopped` and `stop_reason` in its summary.
    """


@hookspec
def hpplug_train_end(model: torch.nn.Module, progress: Progress,
                     train_inputs: Callable[[], Iterator[torch.Tensor]]) -> None:
    """Training is complete: leave the model as it should be tested and saved.

    - **When**: once, after the last epoch or a stop asked by `hpplug_should_stop`, before
      the test split and the final checkpoint. Not fired when a run is interrupted or
      stopped by a signal (it will resume, or was stopped by a sweep).
    - **Arguments**: `model`, the module being trained; `progress`; `train_inputs`, a
      function returning an iterator over every training input on the device, in batches,
      after the evaluation transforms (normalization, no augmentation), the same on every
      process (`swa` recomputes batch-norm statistics with it).
    - **Returns**: nothing. Change the weights in place (`ema` copies its averages in): the
      test and the final checkpoint use them.
    - **Composition**: every implementation runs, in command-line order.
    """
