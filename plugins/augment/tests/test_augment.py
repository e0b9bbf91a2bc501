"""crop, flip and normalize against torchvision, per sample, on whole batches."""

from __future__ import annotations

from importlib import metadata

import pluggy
import pytest
import torch
import torchvision.transforms.functional as TF

from hpplug import Batch, HpplugError, Progress, hookspecs
from hpplug_augment.crop import Crop, crop_at, draw_offsets
from hpplug_augment.flip import Flip, draw_flips
from hpplug_augment.normalize import Normalize

PROGRESS = Progress(update=0, epoch=0, updates_per_epoch=10, epochs=1)


def images(n: int = 64, c: int = 1, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def run(plugin, x: torch.Tensor, train: bool = True, seed: int | None = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    batch = Batch(x=x, y=torch.zeros(len(x), dtype=torch.long), train=train, generator=gen)
    plugin.hpplug_transform_batch(batch, PROGRESS)
    return batch.x


# --- crop -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("c", "h", "w", "size", "padding"), [(1, 28, 28, 0, 4), (3, 32, 32, 28, 2), (2, 20, 24, 16, 0)]
)
def test_crop_equals_torchvision_crop_of_the_padded_image(c, h, w, size, padding) -> None:
    x = images(32, c, h, w)
    out = run(Crop(size=size, padding=padding), x, seed=7)
    th, tw = (h, w) if size == 0 else (size, size)
    # The plugin's draws, replayed from the same seed.
    replay = torch.Generator().manual_seed(7)
    tops, lefts = draw_offsets(32, h + 2 * padding - th, w + 2 * padding - tw, replay, x.device)
    assert out.shape == (32, c, th, tw)
    for i in range(32):
        reference = TF.crop(TF.pad(x[i], [padding], fill=0), int(tops[i]), int(lefts[i]), th, tw)
        assert torch.equal(out[i], reference)


def test_crop_offsets_differ_per_sample_and_cover_the_range() -> None:
    tops, lefts = draw_offsets(2000, 8, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert set(tops.tolist()) == set(range(9)) and set(lefts.tolist()) == set(range(9))
    # Read each sample's offset back from the output: a marker pixel moves by the offset.
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10, 10] = 1.0
    out = run(Crop(padding=4), x, seed=3)
    shifts = {tuple((o[0] == 1).nonzero()[0].tolist()) for o in out if o.any()}
    assert len(shifts) > 20  # many distinct positions in one batch


def test_crop_is_deterministic_with_a_seeded_generator() -> None:
    x = images()
    assert torch.equal(run(Crop(), x, seed=5), run(Crop(), x, seed=5))
    assert not torch.equal(run(Crop(), x, seed=5), run(Crop(), x, seed=6))


def test_crop_without_generator_still_crops() -> None:
    out = run(Crop(padding=4), images(), seed=None)
    assert out.shape == (64, 1, 28, 28) and not torch.equal(out, images())


def test_crop_rejects_a_window_larger_than_the_padded_image() -> None:
    with pytest.raises(HpplugError, match="larger than the padded image"):
        run(Crop(size=40, padding=4), images())


def test_crop_at_matches_advanced_indexing_reference() -> None:
    x = images(8, 3, 10, 12)
    tops, lefts = torch.tensor([0, 1, 2, 3, 4, 4, 0, 2]), torch.tensor([4, 3, 2, 1, 0, 4, 0, 2])
    out = crop_at(x, tops, lefts, 2, 10, 12)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(8):
        t, l = int(tops[i]), int(lefts[i])
        assert torch.equal(out[i], padded[i, :, t : t + 10, l : l + 12])


# --- flip -------------------------------------------------------------------------------


def test_flip_mirrors_exactly_the_drawn_samples() -> None:
    x = images(200)
    out = run(Flip(p=0.5), x, seed=11)
    mask = draw_flips(200, 0.5, torch.Generator().manual_seed(11), x.device)
    assert 0 < mask.sum() < 200
    assert torch.equal(out[mask], TF.hflip(x[mask]))
    assert torch.equal(out[~mask], x[~mask])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_flip_rate_is_about_p(p: float) -> None:
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(20000, 1, 1, 1)  # flipped rows start with 3
    out = run(Flip(p=p), x, seed=2)
    rate = (out[:, 0, 0, 0] == 3).float().mean().item()
    assert abs(rate - p) < 0.015


def test_flip_p_zero_and_one() -> None:
    x = images(16)
    assert torch.equal(run(Flip(p=0.0), x), x)
    assert torch.equal(run(Flip(p=1.0), x), x.flip(-1))


# --- train only / normalize -------------------------------------------------------------


@pytest.mark.parametrize("plugin", [Crop(), Flip(p=1.0)])
def test_crop_and_flip_leave_evaluation_batches_alone(plugin) -> None:
    x = images()
    assert run(plugin, x, train=False) is x


@pytest.mark.parametrize("train", [True, False])
def test_normalize_values_in_training_and_evaluation(train: bool) -> None:
    x = images(8, 3, 5, 5)
    out = run(Normalize(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0)), x, train=train)
    expected = TF.normalize(x, [0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out[:, 1], (x[:, 1] - 0.2) / 0.25)


def test_normalize_single_value_broadcasts_and_parses_like_the_cli() -> None:
    params = Normalize.params
    plugin = Normalize(mean=params["mean"].parse("0.5"), std=params["std"].parse("0.5"))
    x = images(4, 3, 2, 2)
    assert torch.allclose(run(plugin, x), x * 2 - 1)
    assert params["mean"].parse("0.5,0.25") == (0.5, 0.25)


def test_normalize_rejects_bad_lengths_and_std() -> None:
    with pytest.raises(HpplugError, match="2 values but the images have 3 channels"):
        run(Normalize(mean=(0.5, 0.5), std=(0.5,)), images(4, 3, 2, 2))
    with pytest.raises(HpplugError, match="std must be > 0"):
        Normalize(std=(0.5, 0.0))


def test_normalize_runs_after_crop_and_flip_whatever_the_order() -> None:
    """trylast: padding is black in pixel space (0 -> -1 after normalize), as in the article."""
    pm = pluggy.PluginManager("hpplug")
    pm.add_hookspecs(hookspecs)
    # Registered so that hooks run in command-line order normalize, flip, crop.
    for name, plugin in reversed([("normalize", Normalize()), ("flip", Flip()), ("crop", Crop(padding=4))]):
        pm.register(plugin, name=name)
    x = torch.ones(256, 1, 28, 28)
    batch = Batch(x=x, y=torch.zeros(256, dtype=torch.long), train=True, generator=torch.Generator().manual_seed(0))
    pm.hook.hpplug_transform_batch(batch=batch, progress=PROGRESS)
    assert set(batch.x.unique().tolist()) == {-1.0, 1.0}  # padding 0 -> -1, pixels 1 -> 1


def test_entry_points() -> None:
    eps = {e.name: e for e in metadata.entry_points(group="hpplug") if e.dist and e.dist.name == "hpplug-augment"}
    from hpplug_augment.cutmix import CutMix
    from hpplug_augment.cutout import Cutout
    from hpplug_augment.mixup import Mixup

    assert {n: e.load() for n, e in eps.items()} == {"crop": Crop, "flip": Flip, "normalize": Normalize,
                                                     "mixup": Mixup, "cutmix": CutMix, "cutout": Cutout}


def test_crop_warns_once_when_the_padding_is_half_the_image_side(capsys: pytest.CaptureFixture[str]) -> None:
    from hpplug import notices

    notices.new_run()
    crop = Crop(padding=4)
    run(crop, images(8, 1, 28, 28))
    run(crop, images(8, 1, 8, 8), train=False)  # evaluation batches are not cropped
    assert capsys.readouterr().err == ""
    run(crop, images(8, 1, 8, 8))
    run(crop, images(8, 1, 8, 8))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Warning: --crop.padding 4 is at least half the side of the 8x8")
    run(Crop(padding=3), images(8, 1, 8, 7))  # 2 x 3 < 7: fine
    assert capsys.readouterr().err == ""
