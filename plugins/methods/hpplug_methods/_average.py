"""What ``ema`` and ``swa`` share: a torch ``AveragedModel`` of the trained weights that each
evaluation swaps in, a resume restores, and the end of training copies into the model.

Written from hpplug's public API only (hooks and ``Plugin``), as a third-party plugin would be.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, ClassVar, Iterator, Mapping

import torch
from torch.optim.swa_utils import AveragedModel

from hpplug import HpplugError, Plugin, Progress, RunConfig, hookimpl


def tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters, then buffers: what ``AveragedModel(use_buffers=True)`` averages, in its order."""
    return [t.detach() for t in itertools.chain(model.parameters(), model.buffers())]


@torch.no_grad()
def copy_into(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)


class WeightAverage(Plugin):
    """Base of the weight-average plugins. Subclasses say how to average (:meth:`build`) and
    when (calling :meth:`update` from a hook); this class swaps the average in for every
    evaluation once it holds a sample, copies it into the model at the end of training, and
    checkpoints it.

    The ``AveragedModel`` is built at ``hpplug_train_start``, where the model is on its
    device: a resume loads plugin state before that, so the loaded average waits there.
    """

    kind = "weight-average"
    # Two averages would swap their weights in over each other's and restore the wrong ones.
    slot = "weight-average"
    label: ClassVar[str] = "weight-average"
    packable = True  # per-trial average of the member's weights (views of its stacked slice): it trains in a pack

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.average: AveragedModel | None = None
        self.count = 0  # updates of the average, a Python int: no device sync to read it
        self._loaded: dict[str, torch.Tensor] | None = None
        self._raw: list[torch.Tensor] | None = None  # the trained weights, during an evaluation
        self._final = False  # hpplug_train_end copied the average in: nothing left to swap

    def build(self, model: torch.nn.Module) -> AveragedModel:
        raise NotImplementedError

    def update(self, model: torch.nn.Module) -> None:
        """Average the model's current weights in."""
        assert self.average is not None
        self.average.update_parameters(model)
        self.count += 1

    @hookimpl
    def hpplug_train_start(self, model: torch.nn.Module, progress: Progress, config: RunConfig) -> None:
        self.average, self._final = self.build(model), False
        if self._loaded is not None:
            try:
                self.average.load_state_dict(self._loaded)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0][:200]
                raise HpplugError(f"plugin {self.label}: the weight average in the checkpoint does not fit this "
                                  f"model ({first}): resume with the model it was saved with") from None
            self._loaded = None
        self.count = int(self.average.n_averaged)

    @hookimpl
    def hpplug_evaluation_start(self, model: torch.nn.Module, split: str, progress: Progress) -> None:
        if self.average is None or self._final or self.count == 0:
            return
        self._raw = [t.clone() for t in tensors(model)]
        copy_into(tensors(model), tensors(self.average.module))

    @hookimpl
    def hpplug_evaluation_end(self, metrics: Mapping[str, float], model: torch.nn.Module, split: str,
                              progress: Progress) -> None:
        if self._raw is not None:
            copy_into(tensors(model), self._raw)
            self._raw = None

    @hookimpl
    def hpplug_train_end(self, model: torch.nn.Module, progress: Progress,
                         train_inputs: Callable[[], Iterator[torch.Tensor]]) -> None:
        if self.average is not None and self.count:
            copy_into(tensors(model), tensors(self.average.module))
        self._final = True

    def state_dict(self) -> dict[str, Any]:
        average = self.average.state_dict() if self.average is not None else self._loaded
        return {"average": dict(average) if average is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep the average (read from disk: checked) until ``hpplug_train_start`` builds the
        ``AveragedModel``; ``ValueError`` when it cannot be one."""
        if not isinstance(state, dict):
            raise ValueError("it is not a dict")
        average = state.get("average")
        if average is None:  # saved before training started: nothing averaged yet
            return
        n = average.get("n_averaged") if isinstance(average, dict) else None
        if not (isinstance(n, torch.Tensor) and n.numel() == 1 and not n.is_floating_point() and int(n) >= 0
                and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in average.items())):
            raise ValueError("it is not a weight average: tensors by name and an update count n_averaged >= 0")
        self._loaded = average
