"""SGD, Adam and AdamW over the stacked parameters, each member with its own settings.

The operations of torch's single-tensor implementations (its default on the CPU), in their
order, over ``[K, ...]`` tensors. A setting every member shares stays the Python number
torch would use; one that differs (the LR, weight decay, momentum, dampening, betas, eps)
becomes a ``[K, 1, ...]`` vector, equal to torch's per member up to the rounding of one
fused multiply-add.

Each member's torch optimizer, built as alone (its ``hpplug_param_groups``), stays the
record of its settings (``hpplug.loop.set_lr`` sets its groups' ``lr``, read here at every
step) and of its state: after a step its ``state`` holds views of the member's slice of
the stacked state, so ``state_dict()`` is what its checkpoint holds, in torch's format,
and a member resumes alone or packed alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hpplug.pack.support import PackRefused
from hpplug.pack.stack import Stack

# Group options a pack does not vectorize: refused unless every member leaves them off.
UNSUPPORTED = ("nesterov", "maximize", "amsgrad", "capturable", "differentiable", "fused")
STATE = {"sgd": ("momentum_buffer",), "adam": ("step", "exp_avg", "exp_avg_sq"),
         "adamw": ("step", "exp_avg", "exp_avg_sq")}


def _torch(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # under Accelerate's wrapper


class PackedOptimizer:
    """One step of every member's optimizer at once."""

    def __init__(self, kind: str, stack: Stack, optimizers: Sequence[Any]) -> None:
        self.kind, self.stack = kind, stack
        self.link(optimizers)

    def link(self, optimizers: Sequence[Any]) -> None:
        """Each parameter's group in each member's optimizer, and the stacked state from the
        members' own (empty before the first step; loaded on a resume; views once stacked)."""
        self.optimizers = [_torch(o) for o in optimizers]
        self.groups: dict[str, list[dict[str, Any]]] = {}
        self.own: dict[str, list[torch.Tensor]] = {}
        for name in self.trained:
            self.own[name] = [m.get_parameter(name) for m in self.stack.modules]
            self.groups[name] = [_group_of(opt, p, name) for opt, p in zip(self.optimizers, self.own[name])]
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        for name in self.trained:
            stacked = self.stack.params[name]
            states = [opt.state.get(p, {}) for opt, p in zip(self.optimizers, self.own[name])]
            self.state[name] = _stacked_state(states, stacked, self.kind)
        self._expose()

    @property
    def trained(self) -> list[str]:
        """The parameters it steps: not the frozen ones (no gradient: torch leaves them too,
        and they need not be in any group)."""
        return [name for name, stacked in self.stack.params.items() if stacked.requires_grad]

    def _each(self, name: str, key: str) -> list[Any]:
        return [group[key] for group in self.groups[name]]

    @torch.no_grad()
    def step(self) -> None:
        for name in self.groups:
            stacked = self.stack.params[name]
            (self._sgd if self.kind == "sgd" else self._adam)(name, stacked, stacked.grad)
        self._expose()

    def _sgd(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        decays, momenta = self._each(name, "weight_decay"), self._each(name, "momentum")
        if any(decays):
            wd = _per_member(decays, param)
            grad = torch.addcmul(grad, param, wd) if torch.is_tensor(wd) else grad.add(param, alpha=wd)
        if any(momenta):
            state = self.state[name]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                momentum = _per_member(momenta, param)
                keep = _per_member([1 - d for d in self._each(name, "dampening")], param)
                buf.mul_(momentum)
                buf.addcmul_(grad, keep) if torch.is_tensor(keep) else buf.add_(grad, alpha=keep)
            grad = buf if all(momenta) else torch.where(_per_member([m != 0 for m in momenta], param, True), buf, grad)
        lr = _per_member(self._each(name, "lr"), param)
        param.addcmul_(grad, lr, value=-1) if torch.is_tensor(lr) else param.add_(grad, alpha=-lr)

    def _adam(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        state = self.state[name]
        if not state:
            state.update(step=torch.zeros(len(self.groups[name]), dtype=torch.float32),
                         exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        state["step"] += 1
        step = float(state["step"][0])
        lrs, decays = self._each(name, "lr"), self._each(name, "weight_decay")
        beta1s, beta2s = [b[0] for b in self._each(name, "betas")], [b[1] for b in self._each(name, "betas")]
        if any(decays):
            if self.kind == "adamw":  # decoupled: the weights shrink, the gradient stays
                param.mul_(_per_member([1 - lr * wd for lr, wd in zip(lrs, decays)], param))
            else:
                wd = _per_member(decays, param)
                grad = grad + param * wd if torch.is_tensor(wd) else grad.add(param, alpha=wd)
        state["exp_avg"].lerp_(grad, _per_member([1 - b for b in beta1s], param))
        beta2 = _per_member(beta2s, param)
        if torch.is_tensor(beta2):
            state["exp_avg_sq"].mul_(beta2).add_(grad * grad * _per_member([1 - b for b in beta2s], param))
        else:
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = _per_member([lr / (1 - b1**step) for lr, b1 in zip(lrs, beta1s)], param)
        correction = _per_member([(1 - b2**step) ** 0.5 for b2 in beta2s], param)
        denom = (state["exp_avg_sq"].sqrt() / correction).add_(_per_member(self._each(name, "eps"), param))
        if torch.is_tensor(step_size):
            param.add_(state["exp_avg"] / denom * -step_size)
        else:
            param.addcdiv_(state["exp_avg"], denom, value=-step_size)

    def _expose(self) -> None:
        """Each member's torch optimizer state: views of its slice, in torch's own layout
        (SGD keeps no buffer for a group without momentum)."""
        for name, state in self.state.items():
            if not state:
                continue
            for k, (opt, p, group) in enumerate(zip(self.optimizers, self.own[name], self.groups[name])):
                if self.kind == "sgd" and group["momentum"] == 0:
                    continue
                opt.state[p] = {key: state[key][k] for key in STATE[self.kind]}


def _per_member(values: Sequence[Any], like: torch.Tensor, exact: bool = False) -> Any:
    """A setting of every member: the number itself when all agree (torch's own operation
    then), else a ``[K, 1, ...]`` vector broadcasting over ``like`` (``exact``: always one)."""
    if not exact and all(v == values[0] for v in values):
        return values[0]
    dtype = torch.bool if isinstance(values[0], bool) else like.dtype
    return torch.tensor(values, dtype=dtype, device=like.device).view(-1, *[1] * (like.dim() - 1))


def _group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor, name: str) -> dict[str, Any]:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            unsupported = [key for key in UNSUPPORTED if group.get(key)]
            if unsupported:
                raise PackRefused(f"the optimizer's group of {name} sets {unsupported[0]}, which a pack does not "
                                  "support")
            return group
    raise PackRefused(f"parameter {name} is in none of the optimizer's groups (hpplug_param_groups): a pack "
                      "trains every parameter")


def _stacked_state(states: Sequence[dict[str, Any]], like: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """The members' saved state of one parameter, stacked (zeros for a member without it)."""
    keys = [key for key in STATE[kind] if any(key in s for s in states)]
    if not keys:
        return {}
    if kind != "sgd" and not all("step" in s for s in states):
        raise PackRefused("the members' optimizer states are not at the same step")
    out = {}
    for key in keys:
        if key == "step":
            out[key] = torch.tensor([float(s["step"]) for s in states], dtype=torch.float32)
            if len(set(out[key].tolist())) > 1:
                raise PackRefused("the members' optimizer states are not at the same step")
        else:
            out[key] = torch.stack([s[key].to(like.device, like.dtype) if key in s else torch.zeros_like(like[0])
                                    for s in states])
    return out
