"""The schedules against torch's own schedulers, stepped once per epoch or per update."""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib import metadata

import pluggy
import pytest
import torch
from torch.optim import lr_scheduler as sched

from hpplug import HpplugError, Progress, hookspecs
from hpplug_schedulers.cosine import Cosine
from hpplug_schedulers.onecycle import OneCycle, onecycle_factor
from hpplug_schedulers.restarts import Restarts, cycle_position
from hpplug_schedulers.step import Step
from hpplug_schedulers.warmup import Warmup

BASE_LR = 0.1
UPDATES_PER_EPOCH = 7
REL = 1e-9


def torch_lrs(make: Callable[[torch.optim.Optimizer], object], steps: int, base_lr: float = BASE_LR) -> list[float]:
    """The LR torch uses for each of ``steps`` consecutive scheduler steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = make(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def at_epoch(epoch: int, epochs: int, upe: int = UPDATES_PER_EPOCH) -> Progress:
    """Progress at the first update of ``epoch``."""
    return Progress(update=epoch * upe, epoch=epoch, updates_per_epoch=upe, epochs=epochs)


def at_update(update: int, epochs: int, upe: int = UPDATES_PER_EPOCH) -> Progress:
    return Progress(update=update, epoch=update // upe, updates_per_epoch=upe, epochs=epochs)


def plugin_lrs_per_epoch(plugin, epochs: int, base_lr: float = BASE_LR) -> list[float]:
    return [base_lr * plugin.hpplug_lr_factor(at_epoch(e, epochs), base_lr) for e in range(epochs)]


def assert_lrs_equal(ours: list[float], theirs: list[float]) -> None:
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == pytest.approx(b, rel=REL, abs=1e-15), f"step {i}: {a} != torch {b}"


# --- step -------------------------------------------------------------------------------


@pytest.mark.parametrize(("step_size", "gamma"), [(30, 0.1), (3, 0.5), (1, 0.9)])
def test_step_matches_steplr(step_size: int, gamma: float) -> None:
    epochs = 95
    theirs = torch_lrs(lambda o: sched.StepLR(o, step_size=step_size, gamma=gamma), epochs)
    ours = plugin_lrs_per_epoch(Step(step_size=step_size, gamma=gamma), epochs)
    assert_lrs_equal(ours, theirs)


def test_step_article_setting_divides_by_ten_every_30_epochs() -> None:
    plugin = Step()
    factors = [plugin.hpplug_lr_factor(at_epoch(e, 100), BASE_LR) for e in (0, 29, 30, 59, 60, 90)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001])


def test_step_update_interval_drops_at_the_first_update_of_the_epoch() -> None:
    plugin = Step(step_size=2, gamma=0.5, interval="update")
    last_before = at_update(2 * UPDATES_PER_EPOCH - 1, 10)
    first_after = at_update(2 * UPDATES_PER_EPOCH, 10)
    assert plugin.hpplug_lr_factor(last_before, BASE_LR) == 1.0
    assert plugin.hpplug_lr_factor(first_after, BASE_LR) == 0.5


def test_step_rejects_non_positive_gamma() -> None:
    with pytest.raises(HpplugError, match="gamma"):
        Step(gamma=0.0)


# --- cosine -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t_max", "eta_min", "epochs"),
    [(100, 1e-4, 100), (10, 0.0, 35), (7, 0.01, 30)],  # the article's; t_max shorter than the run
)
def test_cosine_matches_cosineannealinglr(t_max: int, eta_min: float, epochs: int) -> None:
    theirs = torch_lrs(lambda o: sched.CosineAnnealingLR(o, T_max=t_max, eta_min=eta_min), epochs)
    ours = plugin_lrs_per_epoch(Cosine(t_max=t_max, eta_min=eta_min), epochs)
    assert_lrs_equal(ours, theirs)


def test_cosine_t_max_defaults_to_run_length() -> None:
    epochs = 20
    theirs = torch_lrs(lambda o: sched.CosineAnnealingLR(o, T_max=epochs), epochs + 1)
    plugin = Cosine()
    ours = [BASE_LR * plugin.hpplug_lr_factor(at_epoch(e, epochs), BASE_LR) for e in range(epochs + 1)]
    assert_lrs_equal(ours, theirs)
    assert ours[-1] == 0.0  # reaches eta_min at the end of the run


def test_cosine_update_interval_is_smooth_and_meets_per_epoch_values() -> None:
    epochs = 10
    per_update = Cosine(interval="update")
    per_epoch = Cosine(interval="epoch")
    within = [per_update.hpplug_lr_factor(at_update(u, epochs), BASE_LR) for u in range(7, 14)]
    assert len(set(within)) == len(within)  # changes at every update of epoch 1
    assert all(a > b for a, b in zip(within, within[1:]))  # and keeps decreasing
    epoch_values = {per_epoch.hpplug_lr_factor(at_update(u, epochs), BASE_LR) for u in range(7, 14)}
    assert len(epoch_values) == 1  # per-epoch stays flat within the epoch
    for e in range(epochs):
        assert per_update.hpplug_lr_factor(at_epoch(e, epochs), BASE_LR) == pytest.approx(
            per_epoch.hpplug_lr_factor(at_epoch(e, epochs), BASE_LR), rel=REL
        )


# --- restarts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t_0", "t_mult", "eta_min"), [(10, 1, 0.0), (3, 1, 1e-3), (1, 2, 0.0), (2, 2, 1e-4), (3, 3, 0.0)]
)
def test_restarts_matches_cosineannealingwarmrestarts(t_0: int, t_mult: int, eta_min: float) -> None:
    epochs = 90
    theirs = torch_lrs(
        lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=t_0, T_mult=t_mult, eta_min=eta_min), epochs
    )
    ours = plugin_lrs_per_epoch(Restarts(t_0=t_0, t_mult=t_mult, eta_min=eta_min), epochs)
    assert_lrs_equal(ours, theirs)


def test_restarts_jump_back_to_base_lr() -> None:
    plugin = Restarts(t_0=2, t_mult=2)
    restarts = [e for e in range(1, 40) if plugin.hpplug_lr_factor(at_epoch(e, 40), BASE_LR) == 1.0]
    assert restarts == [2, 6, 14, 30]


def test_cycle_position_fractional_time() -> None:
    assert cycle_position(6.5, 2, 2) == (0.5, 8)
    assert cycle_position(2.25, 2, 1) == (0.25, 2)


# --- warmup -----------------------------------------------------------------------------


@pytest.mark.parametrize(("warmup_epochs", "start_factor"), [(5, 0.1), (1, 0.25), (12, 0.5)])
def test_warmup_per_epoch_matches_linearlr(warmup_epochs: int, start_factor: float) -> None:
    epochs = 20
    theirs = torch_lrs(
        lambda o: sched.LinearLR(o, start_factor=start_factor, end_factor=1.0, total_iters=warmup_epochs), epochs
    )
    plugin = Warmup(warmup_epochs=float(warmup_epochs), start_factor=start_factor, interval="epoch")
    assert_lrs_equal(plugin_lrs_per_epoch(plugin, epochs), theirs)


def test_warmup_per_update_ramps_within_the_first_epoch() -> None:
    plugin = Warmup(warmup_epochs=1.0, start_factor=0.1)  # default interval: update
    factors = [plugin.hpplug_lr_factor(at_update(u, 5), BASE_LR) for u in range(UPDATES_PER_EPOCH + 2)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[3] == pytest.approx(0.1 + 0.9 * 3 / UPDATES_PER_EPOCH)
    assert factors[UPDATES_PER_EPOCH:] == [1.0, 1.0]


def test_warmup_zero_epochs_is_a_no_op() -> None:
    plugin = Warmup(warmup_epochs=0.0)
    assert {plugin.hpplug_lr_factor(at_update(u, 3), BASE_LR) for u in range(20)} == {1.0}


def test_warmup_composed_with_step_matches_chainedscheduler() -> None:
    epochs, warm, start, step_size, gamma = 20, 5, 0.2, 3, 0.5
    theirs = torch_lrs(
        lambda o: sched.ChainedScheduler(
            [
                sched.LinearLR(o, start_factor=start, end_factor=1.0, total_iters=warm),
                sched.StepLR(o, step_size=step_size, gamma=gamma),
            ]
        ),
        epochs,
    )
    # Composition as the engine does it: every factor returned by the hook, multiplied.
    pm = pluggy.PluginManager("hpplug")
    pm.add_hookspecs(hookspecs)
    pm.register(Step(step_size=step_size, gamma=gamma), name="step")
    pm.register(Warmup(warmup_epochs=float(warm), start_factor=start, interval="epoch"), name="warmup")
    ours = [
        BASE_LR * math.prod(pm.hook.hpplug_lr_factor(progress=at_epoch(e, epochs), base_lr=BASE_LR))
        for e in range(epochs)
    ]
    assert_lrs_equal(ours, theirs)


# --- onecycle ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pct_start", "div", "final_div", "strategy", "epochs"),
    [(0.3, 25.0, 1e4, "cos", 4), (0.25, 10.0, 100.0, "linear", 3), (0.5, 5.0, 1e3, "cos", 2)],
)
def test_onecycle_per_update_matches_onecyclelr(pct_start, div, final_div, strategy, epochs) -> None:
    total = epochs * UPDATES_PER_EPOCH
    theirs = torch_lrs(
        lambda o: sched.OneCycleLR(
            o,
            max_lr=BASE_LR,
            total_steps=total,
            pct_start=pct_start,
            div_factor=div,
            final_div_factor=final_div,
            anneal_strategy=strategy,
            cycle_momentum=False,
        ),
        total,
    )
    plugin = OneCycle(pct_start=pct_start, div_factor=div, final_div_factor=final_div, anneal_strategy=strategy)
    ours = [BASE_LR * plugin.hpplug_lr_factor(at_update(u, epochs), BASE_LR) for u in range(total)]
    assert_lrs_equal(ours, theirs)
    assert BASE_LR / div < max(ours) <= BASE_LR + 1e-15


def test_onecycle_per_epoch_matches_onecyclelr_over_epochs() -> None:
    epochs = 30
    theirs = torch_lrs(
        lambda o: sched.OneCycleLR(o, max_lr=BASE_LR, total_steps=epochs, cycle_momentum=False), epochs
    )
    ours = plugin_lrs_per_epoch(OneCycle(interval="epoch"), epochs)
    assert_lrs_equal(ours, theirs)


def test_onecycle_clamps_past_the_end_and_survives_a_zero_length_phase() -> None:
    last = onecycle_factor(99, 100, 0.3, 25.0, 1e4)
    assert onecycle_factor(100, 100, 0.3, 25.0, 1e4) == last
    assert onecycle_factor(500, 100, 0.3, 25.0, 1e4) == last
    assert last == pytest.approx(1 / 25 / 1e4)
    # pct_start * total == 1: phase 1 has zero length (torch divides by zero); start at max.
    assert onecycle_factor(0, 10, 0.1, 25.0, 1e4) == 1.0


# --- packaging --------------------------------------------------------------------------


def test_entry_points_name_the_plugins() -> None:
    eps = {
        ep.name: ep
        for ep in metadata.entry_points(group="hpplug")
        if ep.dist and ep.dist.name == "hpplug-schedulers"
    }
    assert {name: ep.load() for name, ep in eps.items()} == {
        "step": Step,
        "cosine": Cosine,
        "restarts": Restarts,
        "warmup": Warmup,
        "onecycle": OneCycle,
    }


def test_only_warmup_composes_and_all_share_the_lr_schedule_slot() -> None:
    classes = [Step, Cosine, Restarts, Warmup, OneCycle]
    assert {(c.kind, c.slot) for c in classes} == {("scheduler", "lr-schedule")}
    assert [c.__name__ for c in classes if c.composable] == ["Warmup"]
    for cls in classes:
        assert all(p.help for p in cls.params.values())
        assert cls.params["interval"].choices == ("epoch", "update")


def test_step_warns_once_when_the_run_never_reaches_a_step(capsys: pytest.CaptureFixture[str]) -> None:
    from hpplug import notices

    notices.new_run()
    Step(step_size=30).hpplug_lr_factor(Progress(update=0, epoch=0, updates_per_epoch=10, epochs=31), 0.1)
    assert capsys.readouterr().err == ""
    step = Step(step_size=30)
    for update in range(300):  # every update of a 30-epoch run: the factor stays 1, said once
        assert step.hpplug_lr_factor(Progress(update=update, epoch=update // 10, updates_per_epoch=10, epochs=30),
                                     0.1) == 1.0
    assert capsys.readouterr().err == ("Warning: --step.step_size 30 is not smaller than the run's 30 epochs: the LR "
                                       "never decays; set --step.step_size below 30\n")
    Step(step_size=1).hpplug_lr_factor(Progress(update=0, epoch=0, updates_per_epoch=10, epochs=1), 0.1)
    assert "a one-epoch run never reaches a step" in capsys.readouterr().err
