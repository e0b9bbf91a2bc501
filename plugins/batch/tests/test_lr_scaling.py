"""lr-scaling on RunConfig: global batch = batch x processes x grad_accum."""

from __future__ import annotations

import math
from importlib import metadata

import pytest

from hpplug.config import RunConfig
from hpplug_batch.lr_scaling import LRScaling


def scaled(rule: str, base_batch: int = 64, **config) -> float:
    cfg = RunConfig(**config)
    LRScaling(rule=rule, base_batch=base_batch).hpplug_adjust_config(cfg)
    return cfg.lr


@pytest.mark.parametrize(
    ("batch_size", "num_processes", "grad_accum", "ratio"),
    [(64, 1, 1, 1), (128, 1, 1, 2), (32, 1, 1, 0.5), (64, 4, 1, 4), (64, 2, 4, 8), (256, 8, 2, 64)],
)
def test_linear_and_sqrt_rules(batch_size, num_processes, grad_accum, ratio) -> None:
    kwargs = dict(batch_size=batch_size, num_processes=num_processes, grad_accum=grad_accum, lr=0.1)
    assert scaled("linear", **kwargs) == pytest.approx(0.1 * ratio, rel=1e-12)
    assert scaled("sqrt", **kwargs) == pytest.approx(0.1 * math.sqrt(ratio), rel=1e-12)


def test_base_batch_sets_the_reference_point() -> None:
    assert scaled("linear", base_batch=256, batch_size=1024, lr=0.1) == pytest.approx(0.4)
    assert scaled("sqrt", base_batch=256, batch_size=64, lr=0.1) == pytest.approx(0.05)


def test_only_the_lr_changes() -> None:
    cfg = RunConfig(batch_size=128, lr=0.1)
    before = cfg.to_dict()
    LRScaling().hpplug_adjust_config(cfg)
    after = cfg.to_dict()
    assert {k for k in before if before[k] != after[k]} == {"lr"}


def test_entry_point_and_params() -> None:
    eps = {e.name: e for e in metadata.entry_points(group="hpplug") if e.dist and e.dist.name == "hpplug-batch"}
    assert {n: e.load() for n, e in eps.items()} == {"lr-scaling": LRScaling}
    assert LRScaling.kind == "batch-policy"
    with pytest.raises(ValueError):
        LRScaling.params["rule"].parse("cubic")
    with pytest.raises(ValueError):
        LRScaling.params["base_batch"].parse("0")
