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
the first member's module on the meta device whose dropout layers (``nn.Dropout``, and
``nn.Dropout1d/2d/3d``: one draw per channel) take their masks as inputs
(:class:`MaskedDropout`); a plain ``nn.Sequential`` MLP in full precision runs
:mod:`hpplug.pack.sequential`'s forward instead (the same arithmetic, faster gradients).
Masks are drawn per member from its own generator (:mod:`hpplug.pack.rng`), layer by layer
in the order the forward calls them, exactly as ``F.dropout`` (``F.dropout2d``, ...) draws
them alone (``bernoulli_(1 - p)`` then ``div_(1 - p)``). Any other
random operation inside the forward fails (``randomness="error"``) instead of drawing
numbers that no run alone would draw.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from hpplug.pack.support import PackRefused
from hpplug.pack import sequential

# Channel dropout: one draw per channel of a sample, whose input is [N, C] + this many dims.
CHANNEL = {nn.Dropout1d: 1, nn.Dropout2d: 2, nn.Dropout3d: 3}
# The dropout a pack draws for each member as alone (these classes exactly: a subclass may draw otherwise).
MASKED = (nn.Dropout, *CHANNEL)
# Modules that draw random numbers in training otherwise: not packed (yet).
RANDOM = (nn.AlphaDropout, nn.FeatureAlphaDropout, nn.RReLU)


class MaskedDropout(nn.Module):
    """A dropout layer (:data:`MASKED`) whose mask (already divided by ``1 - p``; one value
    per channel for channel dropout) arrives as a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.empty(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask if self.training else x


@dataclass(frozen=True)
class Site:
    """A dropout layer as the forward meets it: its name and one sample's mask shape (its
    input's, or ``[C, 1, ...]`` for channel dropout)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def check_alike(modules: Sequence[nn.Module]) -> None:
    """The members' modules must be one architecture, each its own: the same layers,
    parameters, shapes and settings (a batch norm's momentum, ...: the forward runs the first
    member's), and no tensor of one member another's (one module object built for all)."""
    first = modules[0]
    for name, module in first.named_modules():
        if isinstance(module, RANDOM):
            raise PackRefused(f"layer {name or 'model'} ({type(module).__name__}) draws random numbers in training; "
                              "a pack draws only nn.Dropout's")
    layout, settings = _layout(first), _settings(first)
    owner: dict[int, int] = {}
    for k, module in enumerate(modules):
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if owner.setdefault(id(tensor), k) != k:
                raise PackRefused(f"the trials' models share {name} (one module object built for all?): a pack "
                                  "needs each trial's own")
        if k and _layout(module) != layout:
            raise PackRefused("the trials' models differ in their layers or parameter shapes once built; "
                              "a pack needs one architecture")
        differ = next((key for key, value in _settings(module).items() if settings.get(key) != value), None)
        if k and differ is not None:
            raise PackRefused(f"the trials' models differ in {differ} ({settings.get(differ)!r} and "
                              f"{_settings(module)[differ]!r}) once built: a pack runs one architecture")


def _settings(module: nn.Module) -> dict[str, Any]:
    """Each layer's plain settings (``momentum``, ``eps``, ``stride``, ...), but dropout's p,
    which is each member's own (its masks)."""
    plain = (bool, int, float, str, tuple, type(None))
    return {f"{name or 'model'}.{key}": value for name, layer in module.named_modules()
            for key, value in vars(layer).items()
            if not key.startswith("_") and key != "training" and isinstance(value, plain)
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
    base = copy.deepcopy(module).to("meta")
    for name, layer in list(base.named_modules()):
        if type(layer) in MASKED:
            parent, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent) if parent else base, child, MaskedDropout())
    return base


class Stack:
    """The stacked parameters of the members' modules and the vectorized forward."""

    def __init__(self, modules: Sequence[nn.Module], autocast: Callable[[], Any]) -> None:
        check_alike(modules)
        self.base = _base(modules[0])
        self.names = [name for name, _ in modules[0].named_parameters()]
        self.autocast = autocast
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}  # batch norm's running statistics, ...: [K, ...] too
        self.modules: list[nn.Module] = []
        self._sites: dict[tuple[int, ...], list[Site]] = {}
        self._vmapped: dict[bool, Callable[..., torch.Tensor]] = {}
        self.layers: list[tuple[str, nn.Module]] | None = None  # the Sequential forward's, or None: vmap's
        self.link(modules)

    def link(self, modules: Sequence[nn.Module]) -> None:
        """Stack the members' current weights and gradients and make theirs views of the
        stack: at the start, and again when a member leaves or a hook replaced a tensor."""
        owned = [dict(m.named_parameters()) for m in modules]
        trained = {name: owned[0][name].requires_grad for name in self.names}  # frozen: no gradient, as alone
        differ = next((name for name in self.names if any(own[name].requires_grad != trained[name] for own in owned)),
                      None)
        if differ is not None:  # a hook froze or unfroze it in one member only
            raise PackRefused(f"{differ} is frozen in some of the trials and trained in others")
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
                    own[name].grad = stacked.grad[k] if trained[name] else None
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
        # The Sequential forward's backward computes every gradient: with a frozen weight, vmap's.
        self.layers = sequential.plan(self.base, MaskedDropout) if all(trained.values()) else None
        self.dropouts = {name: [m.get_submodule(name) for m in modules] for name in self._dropout_names()}

    def replaced(self, k: int, stepping: bool = False) -> bool:
        """Whether a hook replaced one of member ``k``'s weights or gradients instead of
        changing it in place (``p.data = ...``, ``p.grad = ...``, ``zero_grad()``): then the
        pack stacks them again (:meth:`link`), and what the hook kept of the old ones keeps
        its values, as alone. Before the step (``stepping``) a gradient set to None is
        refused: torch's optimizer would leave that weight alone, one member's a pack cannot."""
        found = False
        for name, p, weight, grad in self.views[k]:
            if p.requires_grad != (grad is not None):  # a hook froze or unfroze it
                return True
            if grad is None:  # frozen
                found = found or p.data_ptr() != weight.data_ptr()
                continue
            if p.grad is None and stepping:
                raise PackRefused(f"a plugin set the gradient of {name} to None before the optimizer step "
                                  "(zero_grad()?): torch would not step that weight, which a pack cannot leave out "
                                  "for one trial")
            found = found or p.data_ptr() != weight.data_ptr() or p.grad is None or p.grad.data_ptr() != grad.data_ptr()
        module = self.modules[k]
        return found or any(module.get_buffer(name).data_ptr() != stacked[k].data_ptr()
                            for name, stacked in self.buffers.items())

    def _dropout_names(self) -> list[str]:
        return [name for name, layer in self.base.named_modules() if isinstance(layer, MaskedDropout)]

    def __len__(self) -> int:
        return len(self.modules)

    def zero_grad(self) -> None:
        """Zero in place: the members' gradients stay views of these."""
        for stacked in self.params.values():
            if stacked.grad is not None:
                stacked.grad.zero_()

    # --- dropout ------------------------------------------------------------------------
    def sites(self, sample: tuple[int, ...], device: torch.device) -> list[Site]:
        """The dropout layers in the order the forward calls them, with one sample's input,
        found once per input shape by a forward of the first member's module (in eval
        mode, under no_grad: it draws nothing)."""
        if sample not in self._sites:
            module, found = self.modules[0], []

            def note(layer: nn.Module, args: tuple[Any, ...], name: str) -> None:
                shape, dims = tuple(args[0].shape[1:]), CHANNEL.get(type(layer))
                if dims is not None:  # as F.dropout2d draws: [N, C, 1, 1] for an input [N, C, H, W]
                    if len(shape) != dims + 1:
                        raise PackRefused(f"layer {name} ({type(layer).__name__}) gets inputs of {len(shape) + 1} "
                                          f"dimensions; a pack draws its masks for [N, C] and {dims} more")
                    shape = (shape[0],) + (1,) * dims
                found.append(Site(name, shape, args[0].dtype))

            hooks = [layer.register_forward_pre_hook(lambda layer, args, name=name: note(layer, args, name))
                     for name, layer in module.named_modules() if type(layer) in MASKED]
            mode = module.training
            try:
                module.eval()
                with torch.no_grad(), self.autocast():
                    module(torch.zeros((1, *sample), device=device))
            finally:
                module.train(mode)
                for hook in hooks:
                    hook.remove()
            names = [site.name for site in found]
            if len(set(names)) != len(names) or set(names) != set(self.dropouts):
                raise PackRefused("a dropout layer of the model is called more than once, or not at all, in one "
                                  "forward; a pack draws one mask per layer and forward")
            self._sites[sample] = found
        return self._sites[sample]

    def masks(self, generators: Sequence[torch.Generator], x: torch.Tensor, shared: bool) -> dict[str, torch.Tensor]:
        """Every member's dropout masks for one micro-batch, ``{"<layer>.mask": [K, n, ...]}``."""
        sample = tuple(x.shape[1:] if shared else x.shape[2:])
        n = x.shape[0] if shared else x.shape[1]
        out = {}
        for site in self.sites(sample, x.device):
            masks = torch.empty((len(generators), n, *site.shape), dtype=site.dtype, device=x.device)
            for k, (generator, layer) in enumerate(zip(generators, self.dropouts[site.name])):
                p = layer.p  # read at every draw: a plugin may schedule it
                if p == 0:
                    masks[k].fill_(1)  # F.dropout draws nothing at p = 0, and zeroes everything at 1
                elif p == 1:
                    masks[k].zero_()
                else:
                    masks[k].bernoulli_(1 - p, generator=generator).div_(1 - p)
            out[f"{site.name}.mask"] = masks
        return out

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
