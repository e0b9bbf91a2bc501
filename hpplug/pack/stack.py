"""The members' models as one: parameters stacked ``[K, ...]``, one forward for all of them.

Each member keeps its own module, built, seeded and adjusted exactly as alone; its
parameters become views of its slice of the stacked tensors, its gradients views of
theirs, and its buffers (batch norm's running statistics) views of stacked buffers, which
the vectorized forward updates per member as each one's forward does alone. What a hook
reads or changes in a member's model (a weight average, a gradient clip, ``update_bn``, a
checkpoint, a resume) is the packed state itself; after a hook that replaces a weight, a
gradient or a buffer instead (``p.data = ...``, ``p.grad = ...``) they are stacked again
(:meth:`Stack.replaced`). Frozen weights (``requires_grad=False``) are stacked without a
gradient. What the stack cannot take (another random layer) raises ``PackRefused``.

The forward is ``vmap(functional_call(base, ...))`` over the members: ``base`` is a copy of
the first member's module on the meta device whose dropout layers take each member's masks
as inputs (:mod:`hpplug.pack.dropout`, which draws them as alone); a plain ``nn.Sequential``
MLP in full precision runs :mod:`hpplug.pack.sequential`'s forward instead (the same
arithmetic, faster gradients). Any other random operation inside the forward fails
(``randomness="error"``) instead of drawing numbers that no run alone would draw.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from hpplug.pack import sequential
from hpplug.pack.dropout import MASKED, Dropouts, MaskedDropout, masked
from hpplug.pack.support import PackRefused

# Modules that draw random numbers in training otherwise than dropout: not packed (yet).
RANDOM = (nn.AlphaDropout, nn.FeatureAlphaDropout, nn.RReLU)


def check_alike(modules: Sequence[nn.Module]) -> None:
    """The members' modules must be one architecture, each its own: the same layers,
    parameters, shapes and settings (a batch norm's momentum, ...: the forward runs the first
    member's), and no weight or stateful layer of one member another's (one module object
    built for all). A buffer shared as a constant (registered from one tensor) is fine."""
    first = modules[0]
    for name, module in first.named_modules():
        if isinstance(module, RANDOM):
            raise PackRefused(f"layer {name or 'model'} ({type(module).__name__}) draws random numbers in training; "
                              "a pack draws the masks of dropout only (nn.Dropout, nn.Dropout1d/2d/3d)")
    layout, settings = _layout(first), _settings(first)
    owner: dict[int, int] = {}
    for k, module in enumerate(modules):
        stateful = [(name, layer) for name, layer in module.named_modules() if any(True for _ in layer.buffers(False))]
        for name, thing in [*module.named_parameters(), *stateful]:
            if owner.setdefault(id(thing), k) != k:
                raise PackRefused(f"the trials' models share {name or 'the model'} (one module object built for "
                                  "all?): a pack needs each trial's own")
        if k and _layout(module) != layout:
            raise PackRefused("the trials' models differ in their layers or parameter shapes once built; "
                              "a pack needs one architecture")
        differ = next((key for key, value in _settings(module).items() if settings.get(key) != value), None) \
            if k else None
        if differ is not None:
            raise PackRefused(f"the trials' models differ in {differ} ({settings.get(differ)} and "
                              f"{_settings(module)[differ]}) once built: a pack runs one architecture")


def _plain(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str, type(None))) or (
        type(value) is tuple and all(_plain(v) for v in value))


def _settings(module: nn.Module) -> dict[str, str]:
    """Each layer's plain settings (``momentum``, ``eps``, ``stride``, ...) as their ``repr``
    (NaN equals NaN), but dropout's p, which is each member's own (its masks)."""
    return {f"{name or 'model'}.{key}": repr(value) for name, layer in module.named_modules()
            for key, value in vars(layer).items()
            if not key.startswith("_") and key != "training" and _plain(value)
            and not (type(layer) in MASKED and key == "p")}


def _grad(p: torch.Tensor) -> torch.Tensor:
    """A parameter's gradient to stack: zero where it has none (a new module, after zero_grad())."""
    return p.grad.detach() if p.grad is not None else torch.zeros_like(p)


def _layout(module: nn.Module) -> list[Any]:
    return ([(n, type(m)) for n, m in module.named_modules()]
            + [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in module.named_parameters()]
            + [(n, tuple(b.shape), b.dtype) for n, b in module.named_buffers()])


def _base(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on the meta device, its dropout layers masked."""
    return masked(copy.deepcopy(module).to("meta"))


class Stack:
    """The stacked parameters of the members' modules and the vectorized forward."""

    def __init__(self, modules: Sequence[nn.Module], autocast: Callable[[], Any]) -> None:
        self.autocast = autocast
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}  # batch norm's running statistics, ...: [K, ...] too
        self.modules: list[nn.Module] = []
        self.layers: list[tuple[str, nn.Module]] | None = None  # the Sequential forward's, or None: vmap's
        self._layout: list[Any] | None = None  # the architecture base was made from
        self.link(modules)

    def _build(self, modules: Sequence[nn.Module]) -> None:
        """The architecture, checked, and the forward's copy of it: at the start, and again
        if a hook replaced a layer (``model.fc = nn.Linear(...)``)."""
        check_alike(modules)
        self._layout = _layout(modules[0])
        self.base = _base(modules[0])
        self.names = [name for name, _ in modules[0].named_parameters()]
        self.dropout = Dropouts(self.base, self.autocast)
        self.layers = sequential.plan(self.base, MaskedDropout)
        self._vmapped: dict[bool, Callable[..., torch.Tensor]] = {}

    def link(self, modules: Sequence[nn.Module]) -> None:
        """Stack the members' current weights and gradients and make theirs views of the
        stack: at the start, and again when a member leaves or a hook replaced a tensor."""
        if _layout(modules[0]) != self._layout:
            self._build(modules)
        owned = [dict(m.named_parameters()) for m in modules]
        # Frozen: stacked without a gradient, as alone. Members still training agree on it
        # (Pack.restack); one that only evaluates now may differ (frozen for its test).
        trained = {name: any(own[name].requires_grad for own in owned) for name in self.names}
        self.modules = list(modules)
        self.params = {}
        self.views: list[list[tuple[str, nn.Parameter, torch.Tensor, torch.Tensor | None]]] = [[] for _ in modules]
        with torch.no_grad():
            for name in self.names:
                stacked = torch.stack([own[name].detach() for own in owned]).requires_grad_(trained[name])
                if trained[name]:
                    stacked.grad = torch.stack([_grad(own[name]) for own in owned])
                for k, own in enumerate(owned):
                    own[name].data = stacked.data[k]
                    own[name].grad = stacked.grad[k] if own[name].requires_grad else None
                    self.views[k].append((name, own[name], stacked.data[k], own[name].grad))
                self.params[name] = stacked
            self.buffers = {}
            for name, _ in modules[0].named_buffers():
                stacked = torch.stack([m.get_buffer(name).detach() for m in modules])
                self.buffers[name] = stacked
                for k, m in enumerate(modules):  # every name the buffer has (a buffer tied to two layers)
                    tensor = m.get_buffer(name)
                    for alias, other in m.named_buffers(remove_duplicate=False):
                        if other is tensor:
                            owner, _, leaf = alias.rpartition(".")
                            setattr(m.get_submodule(owner), leaf, stacked[k])  # a registered buffer: replaced
        self.dropout.link(modules)

    def replaced(self, k: int, stepping: bool = False) -> bool:
        """Whether a hook replaced one of member ``k``'s weights or gradients instead of
        changing it in place (``p.data = ...``, ``p.grad = ...``, ``zero_grad()``): then the
        pack stacks them again (:meth:`link`), and what the hook kept of the old ones keeps
        its values, as alone. Before the step (``stepping``) a gradient set to None is
        refused: torch's optimizer would leave that weight alone, one member's a pack cannot."""
        found = False
        module = self.modules[k]
        for name, p, weight, grad in self.views[k]:
            if module.get_parameter(name) is not p:  # a new layer or weight: the architecture again
                found = True
                continue
            if p.requires_grad != (grad is not None):  # a hook froze or unfroze it
                if stepping:  # torch steps what has a gradient, frozen or not: one member's, a pack cannot
                    raise PackRefused(f"a plugin froze or unfroze {name} before the optimizer step")
                found = True
                continue
            if grad is None:  # frozen
                found = found or p.data_ptr() != weight.data_ptr()
                continue
            if p.grad is None and stepping:
                raise PackRefused(f"a plugin set the gradient of {name} to None before the optimizer step "
                                  "(zero_grad()?): torch would not step that weight, which a pack cannot leave out "
                                  "for one trial")
            found = found or p.data_ptr() != weight.data_ptr() or p.grad is None or p.grad.data_ptr() != grad.data_ptr()
        for name, stacked in self.buffers.items():
            try:
                if module.get_buffer(name).data_ptr() != stacked[k].data_ptr():
                    return True
            except AttributeError:  # its layer was replaced
                return True
        return found

    def frozen_changed(self, k: int) -> bool:
        """Whether member ``k``'s weights were frozen or unfrozen since they were stacked
        (by a model hook, or by code that kept the model: checked before every update)."""
        return any(p.requires_grad != (grad is not None) for _, p, _, grad in self.views[k])

    def __len__(self) -> int:
        return len(self.modules)

    def zero_grad(self) -> None:
        """Zero in place: the members' gradients stay views of these."""
        for stacked in self.params.values():
            if stacked.grad is not None:
                stacked.grad.zero_()

    # --- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, shared: bool, masks: dict[str, torch.Tensor] | None = None,
                rows: list[int] | None = None) -> torch.Tensor:
        """Logits ``[K, n, classes]``; ``x`` is one batch for all (``shared``) or ``[K, n, ...]``.
        In training with ``masks`` (``{}`` for a model without dropout), which updates the
        members' buffers (batch norm's running statistics) as alone; else in evaluation, of
        the members ``rows`` only when given."""
        params, buffers = self.params, self.buffers
        if rows is not None and rows != list(range(len(self))):
            params = {name: stacked.detach()[rows] for name, stacked in params.items()}
            buffers = {name: stacked[rows] for name, stacked in buffers.items()}
        with self.autocast():
            if self.layers is not None and not torch.is_autocast_enabled(x.device.type):
                return sequential.forward(self.layers, params, masks or {}, x, shared, training=masks is not None)
            self.base.train(masks is not None)
            logits = self._vmapped_forward(shared)(params, {**buffers, **(masks or {})}, x)
        return logits.float() if logits.dtype != torch.float32 else logits

    def _vmapped_forward(self, shared: bool) -> Callable[..., torch.Tensor]:
        """``functional_call(base)`` vectorized over the members, built once per input kind."""
        if shared not in self._vmapped:
            def call(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
                return functional_call(self.base, (p, b), (inputs,))

            self._vmapped[shared] = vmap(call, in_dims=(0, 0, None if shared else 0), randomness="error")
        return self._vmapped[shared]
