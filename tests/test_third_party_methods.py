"""A third party's training method, written from hpplug's public API alone, installed as a
package and used through its entry point: the public hooks suffice for an EMA-style weight
swap and an early stop without any of hpplug's own modules.

The package is ``tests/files/hpplug-swapstop`` (plugin ``swap-stop``). It is installed with
pip into a private folder, and trained with in a subprocess by ``python -m hpplug run``, as
``tests/test_plugins_packages.py`` does with its packages.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from safetensors.torch import load_file

import hpplug

from .hostile.conftest import rows
from .test_plugins_packages import NO_BUILD_ISOLATION, plugin_env

PACKAGE = Path(__file__).parent / "files" / "hpplug-swapstop"
# What a third party may import: hpplug's top-level names, torch, and Python's own modules.
ALLOWED_MODULES = {"torch", "hpplug", *sys.stdlib_module_names}


def hpplug_imports(path: Path) -> list[str]:
    """Every use of hpplug in ``path`` beyond its top-level public names, and every import of
    a module outside ``ALLOWED_MODULES``."""
    public, found = set(hpplug.__all__), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] not in ALLOWED_MODULES
                      or a.name.startswith("hpplug.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:  # relative: the package's own
            if node.module == "hpplug":
                found += [f"hpplug.{a.name}" for a in node.names if a.name not in public]
            elif node.module.split(".")[0] not in ALLOWED_MODULES or node.module.startswith("hpplug."):
                found.append(node.module)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "hpplug":
            if node.attr not in public:
                found.append(f"hpplug.{node.attr}")
    return found


def test_the_package_uses_nothing_of_hpplug_but_its_public_names():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert sources
    for source in sources:
        assert hpplug_imports(source) == [], f"{source.name} reaches past hpplug's public API"
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["hpplug"] == {"swap-stop": "hpplug_swapstop:SwapStop"}


def test_the_static_check_sees_what_it_must_refuse(tmp_path):
    """The check above would catch a private module, a private name and an unexpected import."""
    probe = tmp_path / "probe.py"
    probe.write_text("import hpplug\nimport hpplug.loop\nfrom hpplug.step import Step\nfrom hpplug import guard\n"
                     "import numpy\nx = hpplug.engine\nfrom hpplug import Plugin\nimport torch.nn\nimport math\n")
    assert hpplug_imports(probe) == ["hpplug.loop", "hpplug.step", "hpplug.guard", "numpy", "hpplug.engine"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package pip-installed into a private folder (built from a copy: pip builds in the
    source tree, which must stay clean)."""
    root = tmp_path_factory.mktemp("third-party")
    shutil.copytree(PACKAGE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *NO_BUILD_ISOLATION,
                    "--disable-pip-version-check", "--target", str(root / "site"), str(root / "src")],
                   check=True, capture_output=True, text=True)
    return root / "site"


def weight_sum(weights: dict) -> float:
    return float(sum(t.double().sum() for t in weights.values()))


@pytest.mark.slow
def test_a_third_party_weight_average_and_early_stop_work_through_the_entry_point(site, tmp_path):
    """val/loss must fall by 10 to count as better: the run stops after epoch 2 of 5, having
    validated with the average of the weights, which the saved checkpoint holds."""
    proc = subprocess.run([sys.executable, "-m", "hpplug", "run", "--plugin", "swap-stop", "--swap-stop.delta", "10",
                           "--epochs", "5", "--checkpoint-every", "1epoch", "--wandb-mode", "disabled",
                           "--output-dir", str(tmp_path)],
                          env=plugin_env(site), capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = tmp_path.iterdir()
    config = json.loads((record / "config.json").read_text())
    assert config["plugin_versions"]["swap-stop"] == "hpplug-swapstop==1.0", "loaded through its entry point"
    summary = json.loads((record / "summary.json").read_text())
    assert (summary["status"], summary["epochs_done"], summary["updates"]) == ("stopped", 2, 42)
    assert summary["stop_reason"].startswith("val/loss has not improved by 10.0 for 1 epochs (best ")
    assert f"stopped early at update 42: {summary['stop_reason']}" in proc.stdout
    assert "test/accuracy" in summary, "the test split is still evaluated after a stop"
    epochs = [row for row in rows(record) if "swap-stop/evaluated" in row]
    assert [row["epoch"] for row in epochs] == [1, 2]
    for row in epochs:  # validation saw the average, not the weights being trained
        assert abs(row["swap-stop/evaluated"] - row["swap-stop/trained"]) > 1e-3, row
    saved = weight_sum(load_file(record / "checkpoint" / "model.safetensors"))
    assert epochs[-1]["swap-stop/evaluated"] == pytest.approx(saved, rel=1e-12), "the average was kept at the end"
    assert epochs[-1]["swap-stop/trained"] != pytest.approx(saved, rel=1e-6)
    assert (record / "checkpoint" / "plugin.swap-stop.json").is_file(), "its state is checkpointed"
