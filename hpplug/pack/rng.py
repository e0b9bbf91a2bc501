"""Each member's random numbers, as they would be in its run alone.

Alone, a run's dropout masks come from torch's global generator (of its device), which
``set_seed`` seeded and the model's initialization advanced. In a pack every member keeps a
generator holding exactly that state and draws its masks from it, in the order its run
would (:mod:`hpplug.pack.stack`). Its checkpoints save that state as the run's own global
state (``rng.0``), so a member resumes alone or in a pack with the same draws.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from hpplug import runstate


def device_state(device: torch.device) -> torch.Tensor:
    """The state of torch's global generator of ``device``'s kind."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_device_state(device: torch.device, state: torch.Tensor) -> None:
    """Set torch's global generator of ``device``'s kind to ``state``."""
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class MemberRng:
    """One member's generators: its device generator for the draws, the others as saved."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        self.saved: dict[str, Any] = {}

    def capture(self) -> None:
        """Take the global generators' state: after the member's set-up, or its restore."""
        self.saved = runstate.rng_state()
        self.generator.set_state(device_state(self.device))

    @contextmanager
    def installed(self, keep: bool = False) -> Iterator[None]:
        """The global generators hold this member's state inside: for a checkpoint, or
        (``keep``) for plugin code that draws from them, what it drew then advancing the
        member's state as it advances the run's alone."""
        outside = runstate.rng_state()
        runstate.set_rng(self.saved)
        set_device_state(self.device, self.generator.get_state())
        try:
            yield
        finally:
            if keep:
                self.capture()
            runstate.set_rng(outside)
