"""``grad-clip``: clip the gradients' global norm to ``max_norm`` before each optimizer step.

A rare batch with a huge gradient (a loss spike, a bad sample, a high LR early on) can undo
many updates of progress; scaling the whole gradient down to a norm of at most ``max_norm``
keeps the direction and bounds the step (Pascanu et al. 2013). It clips in
``hpplug_before_optimizer_step``, where the gradients are complete, averaged over processes
and, under fp16, already unscaled, so ``max_norm`` means the same in every setting.

It logs the norm before clipping (its mean since the last log, ``grad-clip/norm``) and the
share of updates it clipped (``grad-clip/clipped``): the numbers needed to choose ``max_norm``.
Updates whose gradient is not finite are left out of both (under fp16 the scaler skips them).
Both are summed on the device and read once per log, so clipping adds no wait per update.
"""

from __future__ import annotations

from typing import Any

import torch

from hpplug import HpplugError, Param, Plugin, Progress, hookimpl


class GradClip(Plugin):
    """``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, norm_type)`` per update."""

    kind = "optimizer"
    packable = True  # clips the member's gradients (views of its stacked slice) in place: it trains in a pack
    params = {
        "max_norm": Param(float, 1.0, "largest norm of all gradients together (> 0)", min=0.0),
        "norm_type": Param(float, 2.0, "p of the p-norm (2: Euclidean)", min=1.0),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        if self.max_norm <= 0:
            raise HpplugError(f"--grad-clip.max_norm must be > 0 (a norm to clip to), got {self.max_norm}")
        # Since the last log: the sum of the norms before clipping, updates clipped, updates seen.
        self.window = torch.zeros(3, dtype=torch.float64)

    @hookimpl
    def hpplug_before_optimizer_step(self, model: torch.nn.Module) -> None:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_norm, self.norm_type).double()
        if self.window.device != norm.device:
            self.window = self.window.to(norm.device)
        # A non-finite norm (an fp16 overflow, whose step the scaler skips) would hide every
        # other norm of the window: it is left out of both numbers.
        finite = norm.isfinite()
        self.window += torch.stack([norm.where(finite, 0.0), (finite & (norm > self.max_norm)).double(),
                                    finite.double()])

    @hookimpl
    def hpplug_update_metrics(self, progress: Progress) -> dict[str, float] | None:
        total, clipped, count = self.window.tolist()  # the one wait for the device per log
        self.window.zero_()
        if not count:
            return None
        return {"grad-clip/norm": total / count, "grad-clip/clipped": clipped / count}

    def state_dict(self) -> dict[str, Any]:
        """The window since the last log, so that a resumed run logs what an uninterrupted one does."""
        return {"window": self.window.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        window = state.get("window") if isinstance(state, dict) else None
        if not (isinstance(window, list) and len(window) == 3 and all(type(v) in (int, float) for v in window)):
            raise ValueError("it is not grad-clip's window of norms (a list of three numbers)")
        self.window = torch.tensor(window, dtype=torch.float64, device=self.window.device)
