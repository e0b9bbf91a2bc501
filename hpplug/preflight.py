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
    """Before a run starts (nothing written yet): W&B's environment when W&B is used, and memory
    for the dataset's nominal size (``prepare`` checks again with the data and plugins' changes)."""
    from hpplug import data
    from hpplug.tracking import resolve_mode

    if resolve_mode(config.wandb_mode) != "disabled":
        check_wandb_environment(environ)
    if config.dataset in data.SIZES:  # else data.load names the known datasets
        shape, classes, train, test = data.SIZES[config.dataset]
        data_bytes = (train + test) * (math.prod(shape) + 8)  # uint8 pixels, int64 labels
        check_memory(config, shape, classes, train, test, _device(), resident=data_bytes)


def _device() -> torch.device:
    """The device Accelerate will pick for this process."""
    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return torch.device("cpu")


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


def model_size(config: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, list[int]]:
    """Parameters of the model, and the values each layer outputs per sample: built on the
    ``meta`` device, so nothing is allocated whatever the size."""
    from hpplug import models

    outputs: list[int] = []
    try:
        with torch.device("meta"):
            model = models.build(config.model, input_shape, num_classes, config.hidden)
            for module in model.modules():
                if not list(module.children()):
                    module.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
            model(torch.empty(1, *input_shape))
    except HpplugError:
        raise
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise HpplugError(f"--hidden {config.hidden}: the {config.model} cannot be built that large "
                          f"({one_line(exc, 120)}); lower --hidden") from None
    return sum(p.numel() for p in model.parameters()), outputs


def check_memory(config: RunConfig, input_shape: tuple[int, ...], num_classes: int, train_size: int,
                 test_size: int, device: torch.device, resident: int = 0) -> None:
    """Refuse a run whose model, optimizer state and largest batch cannot fit in memory, and a
    ``--grad-accum`` that would split an update into more micro-batches than it has samples."""
    per_update = min(config.global_batch_size, train_size)
    if config.grad_accum > per_update:
        raise HpplugError(f"--grad-accum {config.grad_accum}: an update holds {per_update} samples (at most "
                          f"--batch-size x processes x --grad-accum, and the training set has {train_size}), "
                          f"so it splits into at most {per_update} micro-batches; lower --grad-accum")
    params, outputs = model_size(config, input_shape, num_classes)
    states = OPTIMIZER_STATES[config.optimizer] if config.optimizer != "sgd" or config.momentum else 0
    model_bytes = params * FLOAT_BYTES * (2 + states)  # weights, gradients, optimizer state
    pixels = math.prod(input_shape)
    micro, evaluated = min(config.batch_size, train_size), min(config.eval_batch_size, test_size)
    # Training keeps every layer's output and its gradient; evaluation one layer's in and out.
    train_bytes = micro * (pixels + sum(outputs)) * FLOAT_BYTES * 2
    eval_bytes = evaluated * max(pixels, *outputs) * FLOAT_BYTES * 2
    needed = model_bytes + max(train_bytes, eval_bytes) + resident
    free, where = available(device)
    if needed <= free:
        return
    if model_bytes + resident > free:
        fix = "lower --hidden"
    else:
        fix = "lower --batch-size" if train_bytes >= eval_bytes else "lower --eval-batch-size"
        fix += " (or --hidden)"
    raise HpplugError(
        f"the run needs about {_gb(needed)} of memory but only {_gb(free)} is free {where}: the {config.model} with "
        f"--hidden {config.hidden} has {params:,} parameters ({_gb(model_bytes)} with gradients and "
        f"{config.optimizer} state), a batch of {micro} samples takes {_gb(train_bytes)} and one of "
        f"{evaluated} in evaluation {_gb(eval_bytes)}; {fix}")
