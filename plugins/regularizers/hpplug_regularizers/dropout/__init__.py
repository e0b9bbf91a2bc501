"""``dropout``: insert ``nn.Dropout(p)`` into the model's hidden layers.

Dropout zeroes each hidden activation with probability ``p`` during training (and scales
the others by ``1/(1-p)``), so units cannot co-adapt; at evaluation it is the identity. The
seed article's MLP is ``fc1 -> ReLU -> Dropout(0.5) -> fc2``: this plugin builds exactly that
from hpplug's dropout-free ``mlp`` (and the same before the ``cnn``'s last Linear).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from hpplug import HpplugError, Param, Plugin, hookimpl

if TYPE_CHECKING:
    from hpplug.config import RunConfig

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink,
)  # fmt: skip


def insertion_points(layers: list[nn.Module]) -> list[int]:
    """Indices to insert dropout before: after each Linear but the last, past its activation."""
    linears = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)]
    points = []
    for i in linears[:-1]:
        j = i + 1
        while j < len(layers) and isinstance(layers[j], ACTIVATIONS):
            j += 1
        points.append(j)
    return points


def insert_dropout(model: nn.Sequential, p: float) -> int:
    """Insert ``nn.Dropout(p)`` in place; returns how many were inserted.

    The Sequential's children are re-registered on the same object, so references to the
    model stay valid; numeric child names are renumbered, custom names are kept.
    """
    named = list(model.named_children())
    points = set(insertion_points([m for _, m in named]))
    if not points:
        raise HpplugError(
            "dropout found no hidden Linear layer to follow: it needs an nn.Sequential with at "
            "least two nn.Linear layers (e.g. --model mlp or cnn)"
        )
    numeric = all(name.isdigit() for name, _ in named)
    taken = {name for name, _ in named}
    rebuilt: list[tuple[str, nn.Module]] = []
    for i, (name, module) in enumerate(named):
        if i in points:
            rebuilt.append((_fresh_name(taken), nn.Dropout(p)))
        rebuilt.append((name, module))
    for name, _ in named:
        delattr(model, name)
    for i, (name, module) in enumerate(rebuilt):
        model.add_module(str(i) if numeric else name, module)
    return len(points)


def _fresh_name(taken: set[str]) -> str:
    """``dropout``, ``dropout1``, ...: a child name not used yet (for named Sequentials)."""
    name, k = "dropout", 0
    while name in taken:
        k += 1
        name = f"dropout{k}"
    taken.add(name)
    return name


class Dropout(Plugin):
    """Add ``nn.Dropout(p)`` after the activation of every hidden Linear layer."""

    kind = "regularizer"
    packable = True  # hooks are per trial: it trains in a pack (hpplug.pack)
    params = {
        "p": Param(float, 0.5, "probability of zeroing each hidden activation in training", min=0.0, max=0.99),
    }

    @hookimpl
    def hpplug_adjust_model(self, model: nn.Module, config: RunConfig) -> None:
        if not isinstance(model, nn.Sequential):
            raise HpplugError(
                f"dropout can only insert layers into an nn.Sequential, got {type(model).__name__}: "
                "use --model mlp or cnn, or add dropout to your model yourself"
            )
        insert_dropout(model, self.p)
