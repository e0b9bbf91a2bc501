"""hpplug: a plugin-based PyTorch training engine tracked in Weights & Biases.

The public names are imported when first used (PEP 562), so that ``hpplug --help`` and
``hpplug --version`` do not pay for importing torch, Accelerate and W&B.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Every public name -> the module that defines it: the one list of hpplug's public API.
_PUBLIC = {
    "train": "hpplug.api",
    "Dataset": "hpplug.components", "Model": "hpplug.components", "Splits": "hpplug.components",
    "TensorSplit": "hpplug.components",
    "RunConfig": "hpplug.config",
    "HpplugError": "hpplug.errors",
    "hookimpl": "hpplug.hookspecs",
    "warn": "hpplug.notices",
    "Batch": "hpplug.plugin", "Param": "hpplug.plugin", "Plugin": "hpplug.plugin", "Progress": "hpplug.plugin",
    "Step": "hpplug.step",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hpplug' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:  # what type checkers and IDEs see
    from hpplug.api import train  # noqa: F401
    from hpplug.components import Dataset, Model, Splits, TensorSplit  # noqa: F401
    from hpplug.config import RunConfig  # noqa: F401
    from hpplug.errors import HpplugError  # noqa: F401
    from hpplug.hookspecs import hookimpl  # noqa: F401
    from hpplug.notices import warn  # noqa: F401
    from hpplug.plugin import Batch, Param, Plugin, Progress  # noqa: F401
    from hpplug.step import Step  # noqa: F401
