"""What a plugin author subclasses and reads: ``Plugin``, ``Param``, ``Progress``, ``Batch``.

A plugin is a ``Plugin`` subclass named by an entry point in the ``hpplug`` group. Its
parameters are declared once, on the class, because they are needed before any plugin
object exists (``--help``, validation, sweep templates); hpplug builds one instance per
run with the validated values and registers it with pluggy.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # imported where used: listing plugins and help need Param and Plugin, not torch
    import torch

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool"}


@dataclass(frozen=True)
class Param:
    """One declared plugin parameter: type, default, allowed range or choices, help."""

    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, self.type.__name__)

    def describe_range(self) -> str:
        """The allowed values in words, for errors and ``hpplug plugins``."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.min is not None and self.max is not None:
            return f"between {self.min} and {self.max}"
        if self.min is not None:
            return f">= {self.min}"
        if self.max is not None:
            return f"<= {self.max}"
        return f"a {self.type_name}"

    def parse(self, raw: Any) -> Any:
        """Convert a command-line, YAML or ``wandb agent`` value and check its range.

        Raises ``ValueError`` with a message that says what would be right.
        """
        if raw is None or raw == "None":
            return self.default
        value = self._convert(raw)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{raw!r} is not {self.describe_range()}")
        numbers = value if self.type is tuple else (value,) if self.type in (int, float) else ()
        for number in numbers:  # a tuple's every item, like a single number
            if not math.isfinite(number):
                raise ValueError(f"{raw!r} is not a finite number")
            if (self.min is not None and number < self.min) or (
                self.max is not None and number > self.max
            ):
                raise ValueError(f"{raw!r} is out of range: expected {self.describe_range()}")
        return value

    def _convert(self, raw: Any) -> Any:
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError(f"{raw!r} is not a boolean: expected True or False")
        if self.type is int:
            try:
                number = float(raw) if not isinstance(raw, int) else raw
            except (TypeError, ValueError):
                raise ValueError(f"{raw!r} is not an integer") from None
            if isinstance(number, float) and not number.is_integer():
                raise ValueError(f"{raw!r} is not an integer")
            return int(number)
        if self.type is float:
            try:
                return float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{raw!r} is not a number") from None
        if self.type is tuple:
            return _parse_tuple(raw)
        return self.type(raw)


def _parse_tuple(raw: Any) -> tuple[float, ...]:
    """Accept ``0.5``, ``0.5,0.25``, ``(0.5, 0.25)`` or a list: a tuple of floats."""
    if isinstance(raw, (list, tuple)):
        items = raw
    elif isinstance(raw, (int, float)):
        items = [raw]
    else:
        text = str(raw).strip()
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = text.strip("()[]").split(",")
        items = parsed if isinstance(parsed, (list, tuple)) else [parsed]
    try:
        return tuple(float(item) for item in items)
    except (TypeError, ValueError):
        raise ValueError(f"{raw!r} is not a list of numbers such as 0.5,0.25") from None


@dataclass(frozen=True)
class Progress:
    """Where training stands; hooks read it, and only the engine moves it on (it is frozen:
    a plugin cannot change the run's counters by accident).

    ``update`` counts optimizer updates already taken (0 before the first), so the LR for
    the next update is a pure function of this object: resume-safe and independent of the
    number of processes.
    """

    update: int
    epoch: int
    updates_per_epoch: int
    epochs: int

    @property
    def total_updates(self) -> int:
        return self.updates_per_epoch * self.epochs

    @property
    def epoch_fraction(self) -> float:
        """Epochs done including the current one's fraction: ``update / updates_per_epoch``."""
        return self.update / self.updates_per_epoch


@dataclass
class Batch:
    """One batch on the device; transform hooks replace ``x`` (and may replace ``y``).

    ``y`` holds class indices ``[n]``, or class probabilities ``[n, num_classes]`` once a
    method mixes samples (mixup, cutmix). ``index`` holds the samples' positions in the
    data set split.
    """

    x: torch.Tensor
    y: torch.Tensor
    train: bool
    generator: torch.Generator | None = None
    index: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 0

    def soft_targets(self) -> torch.Tensor:
        """``y`` as class probabilities ``[n, num_classes]`` (float), whichever form it is in."""
        import torch

        if self.y.ndim == 2:
            return self.y
        return torch.nn.functional.one_hot(self.y.long(), self.num_classes).float()


class Plugin:
    """Base class of every hpplug plugin (built-in or third-party alike).

    Class attributes a subclass sets:

    - ``kind``: a family for listings: ``scheduler``, ``regularizer``, ``augmentation``,
      ``batch-policy`` or anything else.
    - ``slot``: a single thing the plugin owns (``lr-schedule``, ``loss``, ``param-groups``).
      Two selected plugins in the same slot are an error unless every one of them but one
      sets ``composable = True`` (``warmup`` composes with a decay schedule).
    - ``params``: ``{name: Param}``; values arrive as attributes of the instance.
    - ``requires_hpplug``: a version specifier such as ``">=0.1"``; checked at load time.
    - ``packable``: ``True`` when the plugin can train in a pack of trials
      (:mod:`hpplug.pack`): its hooks are called once per member with that member's own
      arguments and give what they give alone (randomness from ``batch.generator`` only,
      weights and gradients changed in place, or replaced at the cost of a re-stack; no
      ``hpplug_optimizer_step``).

    Hook implementations are methods marked with ``@hpplug.hookimpl``; state that must
    survive a resume goes through ``state_dict`` / ``load_state_dict``.
    """

    kind: ClassVar[str] = "other"
    slot: ClassVar[str | None] = None
    composable: ClassVar[bool] = False
    params: ClassVar[dict[str, Param]] = {}
    requires_hpplug: ClassVar[str | None] = None
    packable: ClassVar[bool] = False

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(self.params)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown parameters {sorted(unknown)}")
        for name, param in self.params.items():
            setattr(self, name, values.get(name, param.default))

    @property
    def values(self) -> dict[str, Any]:
        """The parameter values this instance runs with."""
        return {name: getattr(self, name) for name in self.params}

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint beyond the parameters; most plugins have none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{type(self).__name__}({args})"
