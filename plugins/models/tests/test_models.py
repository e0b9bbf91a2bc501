"""mlp, cnn, torchvision and timm: real models, real weights files, real import failures."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

from hpplug import HpplugError, Model, discovery
from hpplug_models.cnn import Cnn
from hpplug_models.mlp import Mlp
from hpplug_models.timm_zoo import Timm
from hpplug_models.torchvision_zoo import Torchvision, cache_path

DIGITS, MNIST, CIFAR, TABULAR = (1, 8, 8), (1, 28, 28), (3, 32, 32), (13,)
IMAGES = [DIGITS, MNIST, CIFAR]


@pytest.fixture(autouse=True)
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch's and Hugging Face's caches in the test's folder: nothing read from or written to
    the user's, and every test starts with empty caches. Downloads are off unless a test
    turns them on."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HPPLUG_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def error_of(model: Model, shape: tuple[int, ...], classes: int = 10) -> str:
    """The one-line message ``build`` refuses with."""
    with pytest.raises(HpplugError) as info:
        model.build(shape, classes)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# --- output shapes --------------------------------------------------------------------


@pytest.mark.parametrize(("model", "shapes"), [
    (Mlp(), [*IMAGES, TABULAR]),
    (Cnn(), IMAGES),
    (Torchvision(), IMAGES),
    (Timm(), IMAGES),
], ids=["mlp", "cnn", "torchvision", "timm"])
def test_logits_for_digits_mnist_cifar_and_tabular_inputs(model: Model, shapes: list[tuple[int, ...]]) -> None:
    for shape in shapes:
        net = model.build(shape, 7)
        assert net.training
        assert net(torch.rand(3, *shape)).shape == (3, 7), shape


# --- mlp and cnn: the same modules as before they became plugins -----------------------


def reference(name: str, shape: tuple[int, ...]) -> nn.Sequential:
    """The seed article's MLP and hpplug 0.1's CNN, written out by hand."""
    c, h, w = shape
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 500), nn.ReLU(), nn.Linear(500, 10))
    return nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * (h // 4) * (w // 4), 500), nn.ReLU(), nn.Linear(500, 10))


@pytest.mark.parametrize("shape", [MNIST, CIFAR])
@pytest.mark.parametrize(("plugin", "name"), [(Mlp(), "mlp"), (Cnn(), "cnn")])
def test_mlp_and_cnn_equal_the_reference_layer_for_layer(plugin: Model, name: str, shape: tuple[int, ...]) -> None:
    """Same layers, same order, same initial weights: the seed recipe's numbers do not move."""
    torch.manual_seed(0)
    before = reference(name, shape)
    torch.manual_seed(0)
    after = plugin.build(shape, 10)
    assert repr(after) == repr(before)
    assert after.state_dict().keys() == before.state_dict().keys()
    for key, tensor in before.state_dict().items():
        assert torch.equal(after.state_dict()[key], tensor), key


def test_mlp_takes_any_shape_and_its_hidden_width() -> None:
    net = Mlp(hidden=16).build(TABULAR, 3)
    assert [type(m) for m in net] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert (net[1].in_features, net[1].out_features, net[3].out_features) == (13, 16, 3)
    assert Mlp(hidden=4).build((2, 3, 4, 5), 2)[1].in_features == 120


def test_cnn_width_sets_both_convolutions() -> None:
    net = Cnn(width=8, hidden=20).build(MNIST, 10)
    assert (net[0].out_channels, net[3].in_channels, net[3].out_channels) == (8, 8, 16)
    assert (net[7].in_features, net[7].out_features) == (16 * 7 * 7, 20)


def test_dropout_still_finds_the_hidden_linear_layers() -> None:
    dropout = pytest.importorskip("hpplug_regularizers.dropout")
    from hpplug import RunConfig

    for plugin in (Mlp(), Cnn()):
        net = plugin.build(MNIST, 10)
        dropout.Dropout(p=0.5).hpplug_adjust_model(net, RunConfig())
        assert [type(m) for m in net][-3:] == [nn.ReLU, nn.Dropout, nn.Linear]


@pytest.mark.parametrize("shape", [(1, 3, 3), (1, 8, 2), TABULAR, (3, 0, 32), ()])
def test_cnn_refuses_inputs_it_cannot_pool_twice(shape: tuple[int, ...]) -> None:
    message = error_of(Cnn(), shape)
    assert str(tuple(shape)) in message and "4x4" in message


def test_mlp_refuses_an_empty_input_shape() -> None:
    assert "()" in error_of(Mlp(), ())


# --- torchvision ----------------------------------------------------------------------


def train_step(net: nn.Module, shape: tuple[int, ...], classes: int) -> None:
    """One SGD step on random data: every parameter gets a gradient and the loss is finite."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(net(torch.rand(4, *shape)), torch.randint(0, classes, (4,)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters())
    optimizer.step()


def test_torchvision_resnet18_on_one_channel_28x28_trains() -> None:
    net = Torchvision(arch="resnet18").build(MNIST, 10)
    assert (net.conv1.in_channels, net.fc.out_features) == (1, 10)
    train_step(net, MNIST, 10)


def test_torchvision_unknown_arch_suggests_the_closest_names() -> None:
    message = error_of(Torchvision(arch="resnet181"), CIFAR)
    assert "'resnet181'" in message and "did you mean resnet18," in message
    assert "see torchvision.models.list_models()" in error_of(Torchvision(arch="qqqqqq"), CIFAR)
    # detection models are in torchvision's registry too, but they are not classifiers
    detector = Torchvision(arch="fasterrcnn_resnet50_fpn")
    assert "no classification model 'fasterrcnn_resnet50_fpn'" in error_of(detector, CIFAR)


def test_torchvision_unknown_weights_lists_the_real_ones() -> None:
    message = error_of(Torchvision(arch="resnet18", weights="IMAGENET9K"), CIFAR)
    assert "'IMAGENET9K'" in message and "DEFAULT" in message and "IMAGENET1K_V1" in message


def test_torchvision_needs_images() -> None:
    assert "(13,)" in error_of(Torchvision(), TABULAR)


def test_a_model_that_cannot_take_the_image_size_fails_at_build() -> None:
    message = error_of(Torchvision(arch="vit_b_16"), CIFAR)
    assert "(3, 32, 32)" in message and "Expected 224" in message


def save_weights(arch: str, weights: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real weights file for ``arch`` (randomly initialized, ImageNet-shaped) where torch's
    download path caches ``weights``: what a finished download leaves behind."""
    from torchvision import models

    member = models.get_model_weights(arch)[weights]
    state = models.get_model(arch, weights=None).state_dict()
    path = cache_path(member)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path, state


def test_offline_pretrained_weights_not_cached_is_one_line(caches: Path) -> None:
    message = error_of(Torchvision(arch="resnet18", weights="DEFAULT"), CIFAR)
    expected = caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "ResNet18_Weights.IMAGENET1K_V1" in message and str(expected) in message
    assert "HPPLUG_OFFLINE" in message and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert not (caches / "torch").exists()  # not even the cache folder was made


def test_offline_pretrained_weights_in_the_cache_are_used() -> None:
    _, state = save_weights("resnet18", "IMAGENET1K_V1")
    same = Torchvision(arch="resnet18", weights="IMAGENET1K_V1").build(CIFAR, 1000)
    for key, tensor in same.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    gray = Torchvision(arch="resnet18", weights="ResNet18_Weights.DEFAULT").build(MNIST, 10)
    assert torch.allclose(gray.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(gray.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert gray.fc.out_features == 10  # the ImageNet head replaced for 10 classes
    train_step(gray, MNIST, 10)
    five = Torchvision(arch="resnet18", weights="DEFAULT").build((5, 32, 32), 10)
    assert torch.allclose(five.conv1.weight[:, 3:5], state["conv1.weight"][:, :2] * 3 / 5)


def test_a_pretrained_head_that_is_not_linear_is_one_line() -> None:
    save_weights("squeezenet1_1", "IMAGENET1K_V1")
    message = error_of(Torchvision(arch="squeezenet1_1", weights="DEFAULT"), CIFAR)
    assert "not an nn.Linear with 1000 outputs" in message and "10 classes" in message
    imagenet = Torchvision(arch="squeezenet1_1", weights="DEFAULT").build(CIFAR, 1000)
    assert imagenet(torch.rand(1, *CIFAR)).shape == (1, 1000)


def test_a_damaged_cached_weights_file_is_one_line() -> None:
    path, _ = save_weights("resnet18", "IMAGENET1K_V1")
    path.write_bytes(path.read_bytes()[:1000])
    message = error_of(Torchvision(arch="resnet18", weights="DEFAULT"), CIFAR)
    assert str(path) in message and "delete it" in message


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_a_cached_weights_file_that_would_run_code_is_refused_unrun(tmp_path: Path) -> None:
    path, state = save_weights("resnet18", "IMAGENET1K_V1")
    marker = tmp_path / "code-ran"
    torch.save({**state, "payload": _Payload(marker)}, path)
    message = error_of(Torchvision(arch="resnet18", weights="DEFAULT"), CIFAR)
    assert str(path) in message and "plain weights" in message
    assert not marker.exists()


def test_a_failed_download_is_one_line_and_leaves_no_file(monkeypatch: pytest.MonkeyPatch, caches: Path) -> None:
    monkeypatch.delenv("HPPLUG_OFFLINE")
    dead_proxy = urllib.request.ProxyHandler({"http": "http://127.0.0.1:9", "https": "http://127.0.0.1:9"})
    monkeypatch.setattr(urllib.request, "_opener", urllib.request.build_opener(dead_proxy))
    message = error_of(Torchvision(arch="resnet18", weights="DEFAULT"), CIFAR)
    assert "could not download the weights ResNet18_Weights.IMAGENET1K_V1" in message
    assert "URLError" in message and "resnet18-f37072fd.pth" in message
    assert not list((caches / "torch").rglob("*.*"))


def test_googlenet_gives_plain_logits_in_training() -> None:
    net = Torchvision(arch="googlenet").build((1, 32, 32), 10)
    assert net.training and isinstance(net(torch.rand(2, 1, 32, 32)), torch.Tensor)


# --- timm -----------------------------------------------------------------------------


def test_timm_resnet18_on_three_channel_32x32_trains() -> None:
    net = Timm(arch="resnet18").build(CIFAR, 10)
    assert net.get_classifier().out_features == 10
    train_step(net, CIFAR, 10)
    assert Timm(arch="resnet18").build(MNIST, 10).conv1.in_channels == 1


def test_timm_unknown_arch_suggests_the_closest_names() -> None:
    message = error_of(Timm(arch="resnet181"), CIFAR)
    assert "'resnet181'" in message and "resnet18," in message
    assert "RuntimeError" in error_of(Timm(arch="resnet18.nosuchtag"), CIFAR)


def test_timm_offline_pretrained_not_cached_is_one_line(caches: Path) -> None:
    message = error_of(Timm(arch="resnet18", pretrained=True), CIFAR)
    assert "HPPLUG_OFFLINE" in message and str(caches / "hf") in message
    message = error_of(Timm(arch="gcvit_xxtiny", pretrained=True), (3, 224, 224))  # weights by URL, not the hub
    assert "gcvit_xxtiny_224_nvidia-d1d86009.pth" in message and str(caches / "torch") in message


def test_timm_missing_says_pip_install_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` finds when it is not installed
    assert "pip install timm" in error_of(Timm(), CIFAR)


def test_timm_needs_images() -> None:
    assert "(13,)" in error_of(Timm(), TABULAR)


# --- plugin contract and packaging ----------------------------------------------------


def test_entry_points_name_checked_model_plugins() -> None:
    eps = {e.name: e for e in metadata.entry_points(group="hpplug") if e.dist and e.dist.name == "hpplug-models"}
    assert {n: e.load() for n, e in eps.items()} == {"mlp": Mlp, "cnn": Cnn, "torchvision": Torchvision,
                                                     "timm": Timm}
    for cls in (Mlp, Cnn, Torchvision, Timm):
        discovery.check_class(cls)
        assert issubclass(cls, Model) and cls.kind == "model"
    assert (Torchvision.variant, Timm.variant, Mlp.variant, Cnn.variant) == ("arch", "arch", None, None)
    assert Torchvision.variant in Torchvision.params and Timm.variant in Timm.params


def test_params_validate_like_any_plugins() -> None:
    for param, bad in [(Mlp.params["hidden"], "0"), (Cnn.params["width"], "1.5"),
                       (Timm.params["pretrained"], "maybe")]:
        with pytest.raises(ValueError):
            param.parse(bad)
    assert Timm.params["pretrained"].parse("true") is True
    assert Mlp.params["hidden"].default == 500 and Cnn.params["width"].default == 32


def test_registered_in_process_and_listed(hpplug_register, hpplug_cli) -> None:  # noqa: ANN001
    hpplug_register("my-cnn", Cnn)
    assert discovery.discover()["my-cnn"].active
    code, out, _ = hpplug_cli("plugins", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0
    for name in ("mlp", "cnn", "torchvision", "timm"):
        assert rows[name]["status"] == "active" and rows[name]["kind"] == "model" and rows[name]["builtin"]
    assert {p["name"] for p in rows["my-cnn"]["params"]} == {"hidden", "width"}


def test_importing_the_plugins_does_not_import_the_zoos() -> None:
    code = ("import sys, hpplug_models.torchvision_zoo, hpplug_models.timm_zoo; "
            "print(sorted(m for m in ('timm', 'torchvision.models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
