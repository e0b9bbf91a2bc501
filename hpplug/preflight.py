"""What a run must pass before it writes anything: its environment, and whether it fits.

The option types (:mod:`hpplug.config`) refuse bad values one at a time; these checks need
the whole configuration or the environment: W&B's variables (validated by W&B's own
settings model, which would otherwise fail inside ``wandb.init`` with a pydantic
traceback), the run id (it names a folder) and the memory the model and batches need.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from hpplug.config import RunConfig
from hpplug.errors import HpplugError, one_line

# Tensors of state the optimizer keeps per parameter.
OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2}
FLOAT_BYTES = 4


def check_wandb_environment(environ: Mapping[str, str]) -> None:
    """Every ``WANDB_*`` variable, through W&B's own settings validation, one at a time so the
    error names the variable and what W&B accepts."""
    names = sorted(name for name in environ if name.startswith("WANDB_"))
    if not names:
        return
    import wandb

    settings = wandb.Settings()
    validate = getattr(settings, "update_from_env_vars", None)  # wandb's own reading of its variables
    for name in names if validate is not None else ():
        try:
            validate({name: environ[name]})
        except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, wandb's UsageError, ...
            errors = getattr(exc, "errors", None)
            reason = errors()[0]["msg"] if callable(errors) else one_line(exc)
            raise HpplugError(f"environment variable {name}={environ[name]!r} is refused by W&B: {reason}; "
                              "correct or unset it") from None


def check(config: RunConfig, environ: Mapping[str, str]) -> None:
    """Before a run starts (nothing written yet): W&B's environment when W&B is used.
    Memory is checked in ``prepare``, once the data's shape is known."""
    from hpplug.tracking import resolve_mode

    if resolve_mode(config.wandb_mode) != "disabled":
        check_wandb_environment(environ)


def available(device: torch.device) -> tuple[int, str]:
    """Bytes this process may still allocate on ``device``, and where that is, in words."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"on {device}"
    import psutil  # a dependency of accelerate

    share = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return psutil.virtual_memory().available // share, "in RAM" + (
        f" for each of {share} processes" if share > 1 else "")


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def model_size(model_plugin: Any, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, list[int]]:
    """Parameters of the model, and the values each layer outputs per sample: built on the
    ``meta`` device, so nothing is allocated whatever the size. A model that cannot run on
    ``meta`` is measured by its parameters alone (its outputs are checked on real inputs)."""
    outputs: list[int] = []
    try:
        with torch.device("meta"):
            model = model_plugin.build(tuple(input_shape), num_classes)
    except (HpplugError, RuntimeError, ValueError, TypeError, OverflowError) as exc:
        if "meta" in str(exc):  # code that needs real values (Tensor.item()): checked when built for real
            return 0, []
        if isinstance(exc, HpplugError):
            raise
        raise HpplugError(f"the model cannot be built that large ({one_line(exc, 120)}); lower its size "
                          f"parameters (see `hpplug plugins`)") from None
    if not isinstance(model, torch.nn.Module):
        return 0, []  # build_model names the problem
    params = sum(p.numel() for p in model.parameters())
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel())
                                     if isinstance(out, torch.Tensor) else None)
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.empty(1, *input_shape, device="meta"))
    except Exception:  # noqa: BLE001 - some operations have no meta kernel
        outputs.clear()
    for hook in hooks:
        hook.remove()
    return params, outputs


def check_memory(config: RunConfig, model_plugin: Any, input_shape: tuple[int, ...], num_classes: int,
                 train_size: int, test_size: int, device: torch.device, resident: int = 0) -> None:
    """Refuse a run whose model, optimizer state and largest batch cannot fit in memory, and a
    ``--grad-accum`` that would split an update into more micro-batches than it has samples."""
    per_update = min(config.global_batch_size, train_size)
    if config.grad_accum > per_update:
        raise HpplugError(f"--grad-accum {config.grad_accum}: an update holds {per_update} samples (at most "
                          f"--batch-size x processes x --grad-accum, and the training set has {train_size}), "
                          f"so it splits into at most {per_update} micro-batches; lower --grad-accum")
    params, outputs = model_size(model_plugin, input_shape, num_classes)
    states = OPTIMIZER_STATES[config.optimizer] if config.optimizer != "sgd" or config.momentum else 0
    model_bytes = params * FLOAT_BYTES * (2 + states)  # weights, gradients, optimizer state
    pixels = math.prod(input_shape)
    micro, evaluated = min(config.batch_size, train_size), min(config.eval_batch_size, test_size)
    # Training keeps every layer's output and its gradient; evaluation one layer's in and out.
    train_bytes = micro * (pixels + sum(outputs)) * FLOAT_BYTES * 2
    eval_bytes = evaluated * max(pixels, *outputs, 0) * FLOAT_BYTES * 2
    needed = model_bytes + max(train_bytes, eval_bytes) + resident
    free, where = available(device)
    if needed <= free:
        return
    size = f"--{config.model}.* size parameters"
    if model_bytes + resident > free:
        fix = f"make the model smaller ({size})"
    else:
        fix = "lower --batch-size" if train_bytes >= eval_bytes else "lower --eval-batch-size"
        fix += f" (or {size})"
    raise HpplugError(
        f"the run needs about {_gb(needed)} of memory but only {_gb(free)} is free {where}: the model "
        f"{config.model} has {params:,} parameters ({_gb(model_bytes)} with gradients and "
        f"{config.optimizer} state), a batch of {micro} samples takes {_gb(train_bytes)} and one of "
        f"{evaluated} in evaluation {_gb(eval_bytes)}; {fix}")
