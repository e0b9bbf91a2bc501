"""Random draws for a batch, from ``batch.generator`` wherever that generator lives."""

from __future__ import annotations

import torch


def draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Draw on the generator's device (a CPU generator cannot fill a CUDA tensor)."""
    return generator.device if generator is not None else device


def randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` integers in ``[0, high)`` on ``device``."""
    values = torch.randint(0, high, (n,), generator=generator, device=draw_device(generator, device))
    return values.to(device)


def rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` floats in ``[0, 1)`` on ``device``."""
    return torch.rand(n, generator=generator, device=draw_device(generator, device)).to(device)
