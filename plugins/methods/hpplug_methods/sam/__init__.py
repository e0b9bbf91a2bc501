"""``sam``: sharpness-aware minimization (Foret et al. 2021), around the run's own optimizer.

SAM looks for weights whose whole neighbourhood has a low loss, not only the weights
themselves: each update takes the gradient at ``w + e_w``, the point of the ``rho``-ball
around ``w`` where the loss rises fastest (to first order), and applies it at ``w``. That
costs a second forward and backward pass per update, which ``step.recompute()`` runs over
the same micro-batches as the first, so gradient accumulation and several processes need
nothing of SAM's own: the perturbation is computed from the gradients every process shares.
"""

from __future__ import annotations

import torch

from hpplug import HpplugError, Param, Plugin, RunConfig, Step, hookimpl

# Guards the division by the gradient norm when every gradient is zero (as the reference
# implementation does): the perturbation is then zero, and the update a plain one.
_EPS = 1e-12


def perturbation(params: list[torch.nn.Parameter], rho: float, adaptive: bool) -> list[torch.Tensor]:
    """``e_w`` for each parameter: ``rho * g / ||g||`` over all of them together (SAM), or
    ASAM's scale-invariant ``rho * w^2 g / ||w g||`` (Kwon et al. 2021) with ``adaptive``."""
    scaled = [p.grad * p.abs() if adaptive else p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s).float() for s in scaled]))
    factor = rho / (norm + _EPS)
    return [(s * p.abs() if adaptive else s) * factor.to(s.dtype) for s, p in zip(scaled, params)]


class SAM(Plugin):
    """Drives the optimizer step: perturb to ``w + e_w``, recompute the gradients there,
    restore ``w``, step. The step is the run's optimizer's (SGD, Adam, AdamW, ...)."""

    kind = "optimizer"
    params = {
        "rho": Param(float, 0.05, "radius of the neighbourhood the sharpness is measured in (0.05; ASAM: ~0.5-2)",
                     min=0.0),
        "adaptive": Param(bool, False, "ASAM: a scale-invariant neighbourhood, each weight's radius "
                                       "proportional to its size"),
    }

    @hookimpl
    def hpplug_train_start(self, config: RunConfig) -> None:
        # The fp16 grad scaler unscales once per step; the second pass's gradients would be
        # left scaled. bf16 needs no scaler.
        if config.mixed_precision == "fp16":
            raise HpplugError("sam cannot run under --mixed-precision fp16 (its second pass needs gradients the fp16 "
                              "loss scaler has not yet unscaled): use --mixed-precision bf16 or no")

    @hookimpl
    def hpplug_optimizer_step(self, step: Step) -> bool:
        params = [p for group in step.optimizer.param_groups for p in group["params"] if p.grad is not None]
        with torch.no_grad():
            origin = [p.detach().clone() for p in params]
            for p, e in zip(params, perturbation(params, self.rho, self.adaptive)):
                p.add_(e)
        # Batch-norm running statistics (any buffer) must not count the perturbed second pass.
        buffers = [(b, b.detach().clone()) for b in step.model.buffers()]
        step.zero_grad()
        step.recompute()
        with torch.no_grad():
            for p, w in zip(params, origin):
                p.copy_(w)  # exactly w, not w + e_w - e_w with its rounding
            for b, saved in buffers:
                b.copy_(saved)
        step.step()
        return True
