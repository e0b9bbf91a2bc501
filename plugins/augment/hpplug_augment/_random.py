"""Random draws for a batch, from ``batch.generator`` wherever that generator lives."""

from __future__ import annotations

import math

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


def permutation(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A random order of ``0 .. n-1`` on ``device``: each sample's partner in a mix."""
    return torch.randperm(n, generator=generator, device=draw_device(generator, device)).to(device)


# Marsaglia-Tsang accepts >= 95% of its candidates for every shape >= 1: with 16 per draw,
# all of them are rejected with probability < 1e-20 (then the first candidate is kept).
_CANDIDATES = 16


def log_gamma(shape: float, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Logs of ``n`` draws of Gamma(``shape``, 1), ``shape`` > 0, from ``generator`` alone.

    torch's own Gamma and Beta samplers take no generator, which would tie the draws to the
    global RNG (not reproducible, not resume-exact). Marsaglia and Tsang's method (2000) on
    a fixed number of candidates per draw needs only normal and uniform draws and no host
    sync. Shapes below 1 use Gamma(a) = Gamma(a + 1) * U^(1/a), kept in logs so that a tiny
    ``shape`` cannot underflow to 0.
    """
    boost = shape < 1
    d = (shape + 1 if boost else shape) - 1 / 3
    c = 1 / (9 * d) ** 0.5
    on = draw_device(generator, device)
    z = torch.randn(n, _CANDIDATES, generator=generator, device=on)
    u = 1 - torch.rand(n, _CANDIDATES, generator=generator, device=on)  # in (0, 1]: log is finite
    v = (1 + c * z) ** 3
    log_v = torch.log(v.clamp_min(torch.finfo(v.dtype).tiny))
    accepted = (v > 0) & (torch.log(u) < 0.5 * z * z + d * (1 - v + log_v))
    first = accepted.to(torch.uint8).argmax(1, keepdim=True)  # the first accepted candidate
    logs = log_v.gather(1, first).squeeze(1) + math.log(d)
    if boost:
        w = 1 - torch.rand(n, generator=generator, device=on)
        logs = logs + torch.log(w) / shape
    return logs.to(device)


def beta(alpha: float, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` draws of Beta(``alpha``, ``alpha``) in [0, 1] on ``device``, ``alpha`` > 0:
    X / (X + Y) for X, Y ~ Gamma(``alpha``), computed as sigmoid(log X - log Y)."""
    logs = log_gamma(alpha, 2 * n, generator, device).view(2, n)
    return torch.sigmoid(logs[0] - logs[1])
