"""One resolved run configuration: defaults < command line < ``wandb.config`` in a sweep."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("no", "bf16", "fp16")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class RunConfig:
    """Every hyperparameter of a run; the defaults reproduce the seed article."""

    plugins: list[str] = field(default_factory=list)
    plugin_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset: str = "digits"
    data_root: str = "data"
    model: str = "mlp"
    hidden: int = 500
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.0
    seed: int = 0
    mixed_precision: str = "no"
    grad_accum: int = 1
    wandb_mode: str | None = None
    project: str = "hpplug"
    output_dir: str = "runs"
    log_every: int = 50
    checkpoint_every: str | None = None
    eval_batch_size: int = 1000
    # Filled in by the engine before ``hpplug_adjust_config`` fires.
    num_processes: int = 1

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer update across all processes: what LR-scaling rules see."""
        return self.batch_size * self.num_processes * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def flat(self) -> dict[str, Any]:
        """Hyperparameters as W&B config keys: core fields plus ``<plugin>.<param>``."""
        out = {k: v for k, v in self.to_dict().items() if k != "plugin_params"}
        for plugin, values in self.plugin_params.items():
            for name, value in values.items():
                out[f"{plugin}.{name}"] = value
        return out
