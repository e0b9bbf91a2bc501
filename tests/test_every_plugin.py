"""Cross-cutting checks run over every installed plugin (Composer's pattern): each one is
documented, declares valid parameters, trains from the command line with defaults, and
trains in bf16. (Resume: tests/test_resume.py; two processes: tests/test_distributed.py.)"""

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from hpplug import discovery, hookimpl
from hpplug.plugin import Plugin

from .driver import NEEDS_FILES, cross_cutting

CATALOG = {n: e for n, e in discovery.discover().items() if e.cls is not None}
# How each kind is picked on the command line: models and data sets are one per run.
OPTION = {"model": "--model", "dataset": "--dataset"}


@pytest.fixture(params=sorted(CATALOG))
def entry(request):
    return CATALOG[request.param]


def test_every_plugin_has_a_docstring_and_a_method_card(entry):
    assert issubclass(entry.cls, Plugin)
    assert (entry.cls.__doc__ or "").strip(), f"{entry.name} has no docstring"
    card = Path(inspect.getfile(entry.cls)).parent / "README.md"
    assert card.is_file(), f"{entry.name} has no method card at {card}"
    option = OPTION.get(entry.cls.kind, "--plugin")
    assert f"{option} {entry.name}" in card.read_text(), "the card shows how to use it"


def test_every_parameter_is_documented_and_its_default_valid(entry):
    for name, param in entry.cls.params.items():
        assert param.help.strip(), f"--{entry.name}.{name} has no help"
        assert param.parse(param.default) == param.default or param.default is None


@pytest.mark.parametrize("name", sorted(set(CATALOG) - NEEDS_FILES))
def test_every_plugin_trains_from_the_command_line_with_defaults(name, hpplug_cli, tmp_path):
    entry = CATALOG[name]
    option = OPTION.get(entry.cls.kind, "--plugin")
    code, out, err = hpplug_cli("run", option, entry.name, "--epochs", "1", "--batch-size", "32",
                                "--wandb-mode", "disabled", "--output-dir", str(tmp_path))
    assert code == 0, err
    (record,) = tmp_path.iterdir()
    summary = json.loads((record / "summary.json").read_text())
    assert summary["status"] == "finished" and math.isfinite(summary["train/loss"])
    config = json.loads((record / "config.json").read_text())
    assert config["plugins" if option == "--plugin" else option[2:]] == ([entry.name] if option == "--plugin"
                                                                       else entry.name)
    for name, param in entry.cls.params.items():
        assert config[f"{entry.name}.{name}"] == (list(param.default) if isinstance(param.default, tuple)
                                                  else param.default)


class Bf16Probe(Plugin):
    """Logs whether the model's layers computed in bf16 during the epoch (autocast's doing)."""

    @hookimpl
    def hpplug_train_start(self, model, progress, config):
        self.dtypes = set()
        for module in model.modules():
            if not any(module.children()):
                module.register_forward_hook(lambda m, inputs, out: self.dtypes.add(getattr(out, "dtype", None)))

    @hookimpl
    def hpplug_epoch_end(self, metrics, progress):
        return {"probe/bf16": float(torch.bfloat16 in self.dtypes)}


@pytest.mark.parametrize("name", cross_cutting())
def test_every_plugin_trains_in_bf16(name, hpplug_register, hpplug_train):
    hpplug_register("bf16-probe", Bf16Probe)
    kind = CATALOG[name].kind_name
    chosen = {kind: name} if kind in OPTION else {}
    result = hpplug_train(["bf16-probe"] + ([] if chosen else [name]), mixed_precision="bf16", **chosen)
    assert result.status == "finished", result.summary.get("error")
    assert result.summary["probe/bf16"] == 1.0, "the layers computed in bf16"
    for metric in ("train/loss", "val/loss", "test/loss"):
        assert math.isfinite(result.summary[metric]), metric
