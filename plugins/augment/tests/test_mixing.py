"""mixup, cutmix and cutout: their draws, their targets, and real runs with label smoothing."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import scipy.stats
import torch
import torch.nn.functional as F

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

from hpplug import Batch, HpplugError, Plugin, Progress, hookimpl
from hpplug.testing import read_metrics
from hpplug_augment._mixing import draw_lam
from hpplug_augment._random import beta, log_gamma, permutation, randint
from hpplug_augment.cutmix import CutMix
from hpplug_augment.cutout import Cutout, square_side
from hpplug_augment.mixup import Mixup

PROGRESS = Progress(update=0, epoch=0, updates_per_epoch=10, epochs=1)
CPU = torch.device("cpu")
PACKAGE = Path(__file__).resolve().parents[1]
METHODS = {"mixup": Mixup, "cutmix": CutMix, "cutout": Cutout}


def transform(plugin: Plugin, x: torch.Tensor, y: torch.Tensor | None = None, train: bool = True,
              seed: int | None = 1, num_classes: int = 10) -> Batch:
    y = torch.arange(len(x)) % num_classes if y is None else y
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    batch = Batch(x=x, y=y, train=train, generator=gen, num_classes=num_classes)
    plugin.hpplug_transform_batch(batch, PROGRESS)
    return batch


def images(n: int = 10, c: int = 1, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# --- the Beta draws ------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 3.0])
def test_beta_draws_follow_beta_alpha_alpha(alpha: float) -> None:
    """Kolmogorov-Smirnov against scipy's Beta, on min(lam, 1 - lam) computed from the logs
    (float32 cannot hold lam within 6e-8 of 1, but can hold its distance from 0)."""
    logs = log_gamma(alpha, 40_000, torch.Generator().manual_seed(0), CPU).double().view(2, -1)
    folded = torch.sigmoid(-(logs[0] - logs[1]).abs()).numpy()
    assert scipy.stats.kstest(folded, lambda t: 2 * scipy.stats.beta.cdf(t, alpha, alpha)).pvalue > 1e-3
    gammas = log_gamma(alpha, 20_000, torch.Generator().manual_seed(1), CPU).double().exp().numpy()
    assert scipy.stats.kstest(gammas, "gamma", args=(alpha,)).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [1e-6, 1e-3, 1e3, 1e6])
def test_beta_draws_stay_in_zero_one_for_extreme_alphas(alpha: float) -> None:
    lam = beta(alpha, 5000, torch.Generator().manual_seed(0), CPU)
    assert torch.isfinite(lam).all() and (lam >= 0).all() and (lam <= 1).all()
    spread = (lam - 0.5).abs().mean().item()
    assert spread > 0.49 if alpha < 1 else spread < 0.01  # at the ends, or at one half


def test_draws_come_from_the_batch_generator_only() -> None:
    """Same seed, same batch whatever the global RNG did in between; another seed differs."""
    x = images(32)
    for plugin in (Mixup(), CutMix(), Cutout()):
        torch.manual_seed(1)
        first = transform(plugin, x, seed=5)
        torch.manual_seed(2)
        again = transform(plugin, x, seed=5)
        other = transform(plugin, x, seed=6)
        assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
        assert not torch.equal(first.x, other.x)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_without_a_generator_the_batch_is_still_augmented(name: str) -> None:
    x = images(16)
    assert not torch.equal(transform(METHODS[name](), x, seed=None).x, x)


# --- mixup ---------------------------------------------------------------------------------


def test_mixup_mixes_inputs_and_targets_with_the_drawn_lam_and_pairing() -> None:
    x, y = images(64), torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(3))
    batch = transform(Mixup(alpha=0.4), x, y, seed=9)
    replay = torch.Generator().manual_seed(9)
    lam, perm = draw_lam(0.4, 1.0, replay, CPU), permutation(64, replay, CPU)
    assert 0.01 < lam < 0.99 and not torch.equal(perm, torch.arange(64))
    assert torch.allclose(batch.x, lam * x + (1 - lam) * x[perm], atol=1e-6)
    onehot = F.one_hot(y, 10).float()
    assert torch.allclose(batch.y, lam * onehot + (1 - lam) * onehot[perm], atol=1e-6)
    assert torch.allclose(batch.y.sum(1), torch.ones(64), atol=1e-6)


def test_mixup_of_targets_already_soft_still_sums_to_one() -> None:
    """cutmix then mixup (or mixup twice): mixing probabilities keeps them probabilities."""
    x = images(32)
    batch = transform(CutMix(), x, seed=2)
    soft = batch.y
    gen = torch.Generator().manual_seed(4)
    batch.generator = gen
    Mixup(alpha=1.0).hpplug_transform_batch(batch, PROGRESS)
    replay = torch.Generator().manual_seed(4)
    lam, perm = draw_lam(1.0, 1.0, replay, CPU), permutation(32, replay, CPU)
    assert torch.allclose(batch.y, lam * soft + (1 - lam) * soft[perm], atol=1e-6)
    assert torch.allclose(batch.y.sum(1), torch.ones(32), atol=1e-6) and (batch.y >= 0).all()
    assert (batch.y > 0).sum(1).max() > 2  # up to four labels per sample


def test_mixup_takes_any_input_shape() -> None:
    x = torch.rand(16, 20)
    batch = transform(Mixup(), x)
    assert batch.x.shape == (16, 20) and batch.y.shape == (16, 10)


@pytest.mark.parametrize("values", [{"alpha": 0.0}, {"prob": 0.0}])
@pytest.mark.parametrize("cls", [Mixup, CutMix])
def test_alpha_or_prob_zero_leaves_the_batch_alone(cls: type[Plugin], values: dict) -> None:
    x, y = images(), torch.arange(10)
    batch = transform(cls(**values), x, y)
    assert batch.x is x and batch.y is y


def test_prob_mixes_about_that_share_of_batches() -> None:
    x = images(4)
    mixed = [not torch.equal(transform(Mixup(prob=0.3), x, seed=s).x, x) for s in range(400)]
    assert abs(sum(mixed) / 400 - 0.3) < 0.08


def test_a_batch_of_one_is_mixed_with_itself() -> None:
    x = images(1)
    for cls in (Mixup, CutMix):
        batch = transform(cls(), x, torch.tensor([3]))
        assert torch.allclose(batch.x, x) and torch.allclose(batch.y, F.one_hot(torch.tensor([3]), 10).float())


# --- cutmix --------------------------------------------------------------------------------


def yun_box(lam: float, cy: int, cx: int, h: int, w: int) -> torch.Tensor:
    """Yun et al.'s rand_bbox (their train.py), for the drawn lam and centre."""
    cut_rat = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut_rat), int(w * cut_rat)
    y1, y2 = min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h)
    x1, x2 = min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


@pytest.mark.parametrize(("h", "w"), [(8, 8), (28, 28), (12, 20)])
def test_cutmix_pastes_yuns_box_and_its_targets_mix_by_the_pasted_area(h: int, w: int) -> None:
    n = 16
    x = torch.arange(1.0, n + 1).view(n, 1, 1, 1).expand(n, 3, h, w).clone()  # image i is all i + 1
    clipped = 0
    for seed in range(30):
        batch = transform(CutMix(), x, torch.arange(n), seed=seed, num_classes=n)
        replay = torch.Generator().manual_seed(seed)
        lam, perm = draw_lam(1.0, 1.0, replay, CPU), permutation(n, replay, CPU)
        cy, cx = int(randint(h, 1, replay, CPU)), int(randint(w, 1, replay, CPU))
        box = yun_box(float(lam), cy, cx, h, w)
        share = box.float().mean().item()  # the area pasted into every image
        unclipped = (2 * (int(h * math.sqrt(1 - lam)) // 2)) * (2 * (int(w * math.sqrt(1 - lam)) // 2))
        clipped += box.sum().item() < unclipped
        for i in range(n):
            expected = torch.where(box, float(perm[i] + 1), float(i + 1))
            assert torch.equal(batch.x[i], expected.expand(3, h, w))
            if perm[i] != i:  # labels are distinct: each one's weight is its share of the image
                assert batch.y[i, i].item() == pytest.approx(1 - share, abs=1e-6)
                assert batch.y[i, perm[i]].item() == pytest.approx(share, abs=1e-6)
        assert torch.allclose(batch.y.sum(1), torch.ones(n), atol=1e-6)
    assert clipped > 5, "boxes clipped at the borders were exercised"


def test_cutmix_pastes_about_the_expected_area_on_average() -> None:
    """alpha = 1: 1 - lam is uniform, the box's side is sqrt(1 - lam) of the image's, and
    clipping at the borders leaves 0.30 of a 32x32 image pasted on average (Monte Carlo of
    Yun et al.'s rand_bbox), not the 0.5 of the unclipped box."""
    x = images(16, h=32, w=32)
    shares = [1 - transform(CutMix(), x, torch.arange(16), seed=s, num_classes=16).y.diagonal().min().item()
              for s in range(200)]
    assert 0.25 < sum(shares) / 200 < 0.35


# --- cutout --------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w", "size"), [(8, 8, 0.5), (28, 28, 0.5), (10, 14, 0.3), (9, 9, 1.0)])
def test_cutout_zeroes_one_clipped_square_per_sample(h: int, w: int, size: float) -> None:
    n = 200
    x = torch.ones(n, 3, h, w)
    y = torch.arange(n) % 10
    batch = transform(Cutout(size=size), x, y, seed=8)
    assert batch.y is y
    side = square_side(size, h, w)
    replay = torch.Generator().manual_seed(8)
    cy, cx = randint(h, n, replay, CPU), randint(w, n, replay, CPU)
    full = 0
    for i in range(n):
        zero = batch.x[i] == 0
        assert torch.equal(zero, zero[0].expand(3, h, w)), "the same square in every channel"
        top, left = int(cy[i]) - side // 2, int(cx[i]) - side // 2
        expected = torch.zeros(h, w, dtype=torch.bool)
        expected[max(top, 0):max(top + side, 0), max(left, 0):max(left + side, 0)] = True
        assert torch.equal(zero[0], expected)
        rows, cols = zero[0].any(1).nonzero(), zero[0].any(0).nonzero()
        assert zero[0].sum() == len(rows) * len(cols), "a rectangle"
        full += len(rows) == side and len(cols) == side
    assert 0 < full < n, "whole squares and squares clipped at the borders"


def test_cutout_size_zero_erases_nothing_and_side_rounds_to_pixels() -> None:
    x = images()
    assert transform(Cutout(size=0.0), x).x is x
    assert square_side(0.5, 28, 28) == 14 and square_side(0.5, 8, 8) == 4 and square_side(0.3, 10, 14) == 3


@pytest.mark.parametrize("name", ["cutmix", "cutout"])
def test_box_methods_refuse_inputs_that_are_not_images_in_one_line(name: str) -> None:
    with pytest.raises(HpplugError) as caught:
        transform(METHODS[name](), torch.rand(16, 64))
    line = str(caught.value)
    assert "\n" not in line and f"--plugin {name} needs a batch of images [N, C, H, W]" in line
    assert "[16, 64]" in line


def test_box_methods_take_images_without_a_channel_dimension() -> None:
    """[N, H, W]: the last two dimensions are the image."""
    x = torch.arange(1.0, 33).view(32, 1, 1).expand(32, 8, 8).clone()  # image i is all i + 1
    erased = transform(Cutout(), x).x
    assert erased.shape == (32, 8, 8) and ((erased == 0).flatten(1).sum(1) > 0).all()
    mixed = transform(CutMix(), x, seed=3).x
    pasted = mixed != x
    boxes = [p for p in pasted if p.any()]  # all but the images paired with themselves
    assert mixed.shape == (32, 8, 8) and len(boxes) > 16
    assert all(torch.equal(box, boxes[0]) for box in boxes), "one box for the whole batch"


# --- every method ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_evaluation_batches_are_untouched(name: str) -> None:
    x, y = images(), torch.arange(10)
    batch = transform(METHODS[name](), x, y, train=False)
    assert batch.x is x and batch.y is y


@pytest.mark.parametrize(("argv", "option"), [(("--mixup.alpha", "-1"), "--mixup.alpha"),
                                              (("--cutmix.prob", "1.5"), "--cutmix.prob"),
                                              (("--cutout.size", "2"), "--cutout.size")])
def test_out_of_range_values_are_refused_in_one_line(argv, option, hpplug_register, hpplug_cli, tmp_path) -> None:
    for name, cls in METHODS.items():
        hpplug_register(name, cls)
    plugin = option[2:].split(".")[0]
    code, _, err = hpplug_cli("run", "--plugin", plugin, *argv, "--wandb-mode", "disabled",
                              "--output-dir", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and err.startswith("Error: ") and option in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_the_entry_points_name_these_classes() -> None:
    declared = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]["entry-points"]["hpplug"]
    for name, cls in METHODS.items():
        assert declared[name] == f"{cls.__module__}:{cls.__name__}"
        assert (PACKAGE / "hpplug_augment" / name / "README.md").is_file()


# --- real runs on digits -------------------------------------------------------------------


class Seen:
    """What the probes saw of the first epoch's training: targets before and after the
    transforms, and the model's logits."""

    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []


class ProbeFirst(Plugin):
    @hookimpl(tryfirst=True)
    def hpplug_transform_batch(self, batch, progress):
        if batch.train and progress.epoch == 0:
            Seen.before.append(batch.y.clone())


class ProbeLast(Plugin):
    @hookimpl(trylast=True)
    def hpplug_transform_batch(self, batch, progress):
        if batch.train and progress.epoch == 0:
            Seen.after.append(batch.y.clone())

    @hookimpl
    def hpplug_adjust_model(self, model, config):
        def keep(module, args, out):
            if module.training and torch.is_grad_enabled() and len(Seen.logits) < len(Seen.after):
                Seen.logits.append(out.detach().float().clone())

        model.register_forward_hook(keep)


def test_mixup_with_label_smoothing_trains_on_the_smoothed_mixed_targets(hpplug_register, hpplug_train) -> None:
    """The loss is cross-entropy against (1 - eps) * mixed + eps / C, by hand, and the training
    accuracy is counted against each mix's dominant label."""
    for name, cls in (("mixup", Mixup), ("probe-first", ProbeFirst), ("probe-last", ProbeLast)):
        hpplug_register(name, cls)
    Seen.before, Seen.after, Seen.logits = [], [], []
    eps = 0.1
    result = hpplug_train(["probe-first", "mixup", "label-smoothing", "probe-last"],
                          params={"mixup": {"alpha": 0.4}, "label-smoothing": {"smoothing": eps}}, log_every=1)
    assert result.status == "finished" and len(Seen.after) == len(Seen.logits) == len(Seen.before) > 1
    targets, logits = Seen.after[0].double(), Seen.logits[0].double()
    assert targets.shape == logits.shape and torch.allclose(targets.sum(1), torch.ones(len(targets), dtype=torch.double))
    assert ((targets > 0) & (targets < 1)).any(), "the targets are mixed"
    smoothed = (1 - eps) * targets + eps / targets.shape[1]
    by_hand = -(smoothed * torch.log_softmax(logits, 1)).sum(1).mean().item()
    first = next(row for row in read_metrics(result) if row.get("step") == 1 and "train/loss" in row)
    assert first["train/loss"] == pytest.approx(by_hand, rel=1e-5)
    # Training accuracy: against the dominant label of each mix, not the label before mixing.
    dominant = torch.cat([t.argmax(1) for t in Seen.after])
    predicted = torch.cat([l.argmax(1) for l in Seen.logits])
    assert (dominant != torch.cat(Seen.before)).any()
    expected = (predicted == dominant).double().mean().item()
    assert result.summary["train/accuracy"] == pytest.approx(expected, abs=1e-12)


def _core_test_module(name: str):
    """A module of hpplug's own test suite (the resume harness; importable when pytest runs
    from the repository's root, as `python -m pytest` does)."""
    return importlib.import_module(f"tests.{name}")


def test_all_three_with_label_smoothing_resume_exactly(hpplug_register, hpplug_train, tmp_path) -> None:
    """Cut at update 35, resumed from update 30's checkpoint: ends exactly like the straight run
    (the draws are a function of the run's seed and update only, so the same seed is the same run)."""
    resume = _core_test_module("test_resume")
    same_run = _core_test_module("hostile.conftest").assert_same_run
    hpplug_register("crash-at", resume.CrashAt)
    for name, cls in METHODS.items():
        hpplug_register(name, cls)
    options = dict(epochs=2, log_every=4, checkpoint_every="10", params={"mlp": {"hidden": 16}},
                   plugins=["crash-at", "mixup", "cutmix", "cutout", "label-smoothing"])
    baseline, cut = resume.crash_and_resume(hpplug_train, tmp_path, options)
    same_run(cut, baseline)


def test_all_three_run_under_bf16(hpplug_register, hpplug_train) -> None:
    for name, cls in METHODS.items():
        hpplug_register(name, cls)
    result = hpplug_train(["mixup", "cutmix", "cutout", "label-smoothing"], mixed_precision="bf16")
    assert result.status == "finished" and math.isfinite(result.summary["train/loss"])
    assert 0 <= result.summary["train/accuracy"] <= 1
