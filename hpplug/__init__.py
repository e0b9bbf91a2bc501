"""hpplug: a plugin-based PyTorch training engine tracked in Weights & Biases."""

__version__ = "0.1.0"

from hpplug.api import train  # noqa: E402
from hpplug.components import Dataset, Model, Splits, TensorSplit  # noqa: E402
from hpplug.config import RunConfig  # noqa: E402
from hpplug.errors import HpplugError  # noqa: E402
from hpplug.hookspecs import hookimpl  # noqa: E402
from hpplug.notices import warn  # noqa: E402
from hpplug.plugin import Batch, Param, Plugin, Progress  # noqa: E402
from hpplug.step import Step  # noqa: E402

__all__ = ["Batch", "Dataset", "HpplugError", "Model", "Param", "Plugin", "Progress", "RunConfig", "Splits",
           "Step", "TensorSplit", "__version__", "hookimpl", "train", "warn"]
