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


def test_warns_when_the_global_batch_is_the_base_batch(capsys: pytest.CaptureFixture[str]) -> None:
    from hpplug import notices

    notices.new_run()
    for batch, processes, accum in ((128, 1, 1), (32, 2, 2), (32, 1, 1)):
        LRScaling().hpplug_adjust_config(RunConfig(batch_size=batch, num_processes=processes, grad_accum=accum))
    assert capsys.readouterr().err == ""
    LRScaling().hpplug_adjust_config(RunConfig(batch_size=32, num_processes=2, grad_accum=1))
    err = capsys.readouterr().err
    assert err.startswith("Warning: --plugin lr-scaling does nothing: the global batch 64 (--batch-size 32 x 2 "
                          "process(es) x --grad-accum 1) equals --lr-scaling.base_batch 64") and err.count("\n") == 1
