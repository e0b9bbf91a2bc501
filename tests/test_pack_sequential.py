"""hpplug.pack.sequential: a packed Sequential MLP's forward and gradients without vmap.

Checked against ``vmap(functional_call(...))`` (the pack's general forward) on the same
stacked weights, for a batch shared by every member and one batch per member, and
against the models that must not take it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from hpplug.pack import sequential
from hpplug.pack.dropout import MaskedDropout
from hpplug.pack.stack import _base

K, N = 3, 5


def models(make) -> list[nn.Module]:
    torch.manual_seed(0)
    return [make() for _ in range(K)]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Dropout(0.5), nn.Linear(7, 6), nn.Tanh(),
                         nn.Linear(6, 4, bias=False))


def in_place() -> nn.Module:  # no bias: a ReLU(inplace=True) changes the Linear's own output
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7, bias=False), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Linear(7, 4, bias=False), nn.ReLU(inplace=True))


def tokens() -> nn.Module:  # a Linear over the last dimension of [n, seq, features]
    return nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 3), nn.Flatten(start_dim=1))


@pytest.mark.parametrize("make, sample", [(mlp, (3, 4)), (in_place, (3, 4)), (tokens, (2, 5))])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_the_forward_and_its_gradients_are_vmaps(make, sample, shared: bool, training: bool) -> None:
    members = models(make)
    base = _base(members[0])
    layers = sequential.plan(base, MaskedDropout)
    assert layers is not None
    stacked, _ = stack_module_state(members)
    x = torch.randn((N, *sample) if shared else (K, N, *sample))
    masks = {name + ".mask": (torch.rand(K, N, 7) > 0.5).float() * 2
             for name, layer in base.named_children() if isinstance(layer, MaskedDropout)} if training else {}
    results = []
    for how in ("sequential", "vmap"):
        params = {name: p.detach().clone().requires_grad_() for name, p in stacked.items()}
        if how == "sequential":
            out = sequential.forward(layers, params, masks, x, shared, training)
        else:
            base.train(training)
            out = vmap(lambda p, b, i: functional_call(base, (p, b), (i,)),
                       in_dims=(0, 0, None if shared else 0))(params, masks, x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), {name: p.grad for name, p in params.items()}))
    (out, grads), (expected, expected_grads) = results
    assert out.shape == expected.shape == (K, N, out.shape[-1])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        assert grad.is_contiguous()  # in its weight's layout: no copy when it is accumulated
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-6)


def test_only_a_plain_sequential_of_known_layers_without_hooks_takes_it() -> None:
    assert sequential.plan(_base(mlp()), MaskedDropout) is not None
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    wrapped = nn.ModuleDict({"mlp": mlp()})
    no_linear = nn.Sequential(nn.Flatten(), nn.ReLU())
    batch_first = nn.Sequential(nn.Flatten(start_dim=0), nn.Linear(4, 2))
    hooked = mlp()
    hooked[1].register_forward_hook(lambda *args: None)
    for model in (conv, wrapped, no_linear, batch_first, hooked):
        assert sequential.plan(_base(model), MaskedDropout) is None, model
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert sequential.plan(_base(mlp()), MaskedDropout) is None  # a global hook sees every module
    finally:
        handle.remove()
