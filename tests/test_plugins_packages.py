"""Real plugin packages, installed through entry points, against the real command line.

Small distributions (a good plugin, one whose import fails, two that register the same
name, a misspelled hook, one that needs a newer hpplug) are built and installed with pip
into a private folder (``--target``); hpplug then runs in a subprocess with that folder on
``PYTHONPATH``, so the test environment itself is never changed. To keep this fast, one
subprocess runs every command line below through ``hpplug.cli.main`` (what
``python -m hpplug`` runs) and one more trains with ``python -m hpplug run``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from hpplug import __version__
from hpplug.discovery import BUILTIN_DISTRIBUTIONS, DISABLE_AUTOLOAD_ENV

OFF = {DISABLE_AUTOLOAD_ENV: "1"}
# Build with this environment's setuptools when it has one (fast, offline); else let pip fetch it.
NO_BUILD_ISOLATION = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
QUIET_RUN = ["--epochs", "1", "--wandb-mode", "disabled"]

# distribution -> (module source, entry points, hpplug requirement)
PACKAGES: dict[str, tuple[str, dict[str, str], str]] = {
    "hpplug-good": ('''
        from hpplug import Param, Plugin, hookimpl

        class Good(Plugin):
            """Multiplies the LR by a constant."""
            kind = "scheduler"
            params = {"factor": Param(float, 0.5, "LR multiplier of the good plugin", min=0.01, max=1.0)}

            @hookimpl
            def hpplug_lr_factor(self, progress, base_lr):
                return self.factor
        ''', {"good": "hpplug_good:Good"}, "hpplug>=0.1"),
    "hpplug-broken": ("import a_module_that_does_not_exist\n", {"broken": "hpplug_broken:Broken"}, "hpplug"),
    "dup-a": ("from hpplug import Plugin\nclass Twin(Plugin): pass\n", {"twin": "dup_a:Twin"}, "hpplug"),
    "dup-b": ("from hpplug import Plugin\nclass Twin(Plugin): pass\n", {"twin": "dup_b:Twin"}, "hpplug"),
    "hpplug-typo": ('''
        from hpplug import Plugin, hookimpl

        class Typo(Plugin):
            @hookimpl
            def hpplug_lr_facter(self, progress, base_lr):
                return 0.5
        ''', {"typo": "hpplug_typo:Typo"}, "hpplug"),
    "hpplug-newer": ('''
        from hpplug import Plugin

        class Newer(Plugin):
            requires_hpplug = ">=99"
        ''', {"newer": "hpplug_newer:Newer"}, "hpplug"),
    "hpplug-future": ("from hpplug import Plugin\nclass Future(Plugin): pass\n",
                      {"future": "hpplug_future:Future"}, "hpplug>=99"),
    # A third party's model and data set, through the same entry points as any plugin.
    "hpplug-zoo": ('''
        import torch
        from torch import nn
        from torch.utils.data import TensorDataset
        from hpplug import Dataset, Model, Param, Splits

        class TinyNet(Model):
            """One hidden layer of ``width`` units over flattened inputs."""
            params = {"width": Param(int, 16, "hidden units of tiny-net", min=1)}

            def build(self, input_shape, num_classes):
                return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), self.width),
                                     nn.ReLU(), nn.Linear(self.width, num_classes))

        class Blobs(Dataset):
            """Three Gaussian blobs in ``dims`` dimensions: a tabular data set."""
            params = {"dims": Param(int, 4, "feature dimensions of blobs", min=1)}

            def load(self, root, download):
                g = torch.Generator().manual_seed(0)
                centers = torch.randn(3, self.dims, generator=g) * 4
                y = torch.randint(0, 3, (600,), generator=g)
                x = centers[y] + torch.randn(600, self.dims, generator=g)
                return Splits(train=TensorDataset(x[:500], y[:500]), test=TensorDataset(x[500:], y[500:]),
                              classes=["a", "b", "c"])
        ''', {"tiny-net": "hpplug_zoo:TinyNet", "blobs": "hpplug_zoo:Blobs"}, "hpplug>=0.1"),
}


def write_distribution(root: Path, dist: str, source: str, entry_points: dict[str, str], requires: str) -> Path:
    module = dist.replace("-", "_")
    folder = root / dist
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(textwrap.dedent(source))
    eps = "\n".join(f'{name} = "{target}"' for name, target in entry_points.items())
    (folder / "pyproject.toml").write_text(textwrap.dedent(f'''\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.0"
        dependencies = ["{requires}"]

        [project.entry-points.hpplug]
        {{eps}}

        [tool.setuptools]
        packages = ["{module}"]
        ''').replace("{eps}", eps))
    return folder


def plugin_env(site: Path) -> dict[str, str]:
    """This environment plus the private site folder; one thread is plenty for tiny runs."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    env.pop(DISABLE_AUTOLOAD_ENV, None)
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin-packages")
    folders = [write_distribution(root, dist, *spec) for dist, spec in PACKAGES.items()]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *NO_BUILD_ISOLATION,
                    "--disable-pip-version-check", "--target", str(root / "site"), *map(str, folders)],
                   check=True, capture_output=True, text=True)
    return root / "site"


DRIVER = '''
import contextlib, io, json, os, sys
from hpplug import discovery
from hpplug.cli import main

cases = json.loads(open(sys.argv[1]).read())
base = dict(os.environ)
results = {}
for name, (env, argv) in cases.items():
    os.environ.clear()
    os.environ.update({**base, **env})
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    status = {n: e.status for n, e in discovery.discover().items()}
    results[name] = {"code": code, "out": out.getvalue(), "err": err.getvalue(), "status": status}
open(sys.argv[2], "w").write(json.dumps(results))
'''


@pytest.fixture(scope="module")
def cli(site: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every command line below, run once in one subprocess: name -> code, out, err, status."""
    work = tmp_path_factory.mktemp("plugin-cli")

    def run(name: str, *argv: str) -> list[str]:
        return [*argv, *QUIET_RUN, "--output-dir", str(work / name)]

    cases = {
        "list": ({}, ["plugins"]),
        "list_json": ({}, ["plugins", "--json"]),
        "help": ({}, ["run", "--help"]),
        "sweep_template": ({}, ["sweep", "--template", "--plugin", "good"]),
        "train_without_plugins": ({}, run("train_without_plugins", "run")),
        "use_broken": ({}, run("use_broken", "run", "--plugin", "broken")),
        "use_twin": ({}, run("use_twin", "run", "--plugin", "twin")),
        "use_typo": ({}, run("use_typo", "run", "--plugin", "typo")),
        "use_newer": ({}, run("use_newer", "run", "--plugin", "newer")),
        "use_future": ({}, run("use_future", "run", "--plugin", "future")),
        "bad_value": ({}, run("bad_value", "run", "--plugin", "good", "--good.factor", "5")),
        "off_list": (OFF, ["plugins"]),
        "off_list_json": (OFF, ["plugins", "--json"]),
        "off_use_good": (OFF, run("off_use_good", "run", "--plugin", "good")),
        "off_train_builtin": (OFF, run("off_train_builtin", "run", "--plugin", "cosine")),
    }
    (work / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(work / "cases.json"), str(work / "results.json")],
                          env=plugin_env(site), capture_output=True, text=True, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    for name, result in results.items():
        result["ran"] = (work / name).exists()
    return results


def one_line_error(result: dict[str, Any]) -> str:
    """A rejected command: exit code 2, one line on stderr, no run started."""
    assert result["code"] == 2, result
    lines = result["err"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result["err"]
    assert not result["ran"], "a rejected command must not start a run"
    return lines[0]


def rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(result["out"])}


def test_a_good_plugin_trains_through_the_console_script(site: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hpplug", "run", "--plugin", "good", "--good.factor", "0.25",
                           *QUIET_RUN, "--output-dir", str(tmp_path)],
                          env=plugin_env(site), capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert " finished: " in proc.stdout
    (record,) = tmp_path.iterdir()
    config = json.loads((record / "config.json").read_text())
    assert config["plugins"] == ["good"] and config["good.factor"] == 0.25
    assert config["plugin_versions"]["good"] == "hpplug-good==1.0"
    assert set(config["plugin_versions"]) == {"good", "mlp", "digits"}  # the model and data set too
    lrs = [row["lr"] for row in map(json.loads, (record / "metrics.jsonl").read_text().splitlines()) if "lr" in row]
    assert lrs and all(lr == pytest.approx(0.1 * 0.25) for lr in lrs)


def test_a_third_party_model_and_data_set_train_by_name(site: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hpplug", "run", "--model", "tiny-net", "--tiny-net.width", "8",
                           "--dataset", "blobs", "--blobs.dims", "5", "--epochs", "3", "--wandb-mode", "disabled",
                           "--output-dir", str(tmp_path)],
                          env=plugin_env(site), capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (record,) = tmp_path.iterdir()
    config = json.loads((record / "config.json").read_text())
    assert (config["model"], config["tiny-net.width"], config["dataset"], config["blobs.dims"]) == ("tiny-net", 8, "blobs", 5)
    assert config["plugin_versions"]["tiny-net"] == "hpplug-zoo==1.0"
    summary = json.loads((record / "summary.json").read_text())
    assert summary["test/accuracy"] > 0.9 and summary["val/accuracy"] > 0.9  # well-separated blobs


def test_plugins_lists_every_package_with_its_status(cli: dict[str, Any]) -> None:
    status = cli["list"]["status"]
    assert status["good"] == "active"
    for bad in ("broken", "twin", "typo", "newer", "future"):
        assert status[bad] == "error"
    builtin = {name for name, row in rows(cli["list_json"]).items() if row["builtin"]}
    assert builtin and all(status[name] == "active" for name in builtin)
    assert cli["list"]["code"] == 0 and cli["list_json"]["code"] == 0


def test_plugins_shows_the_declared_parameters(cli: dict[str, Any]) -> None:
    good = rows(cli["list_json"])["good"]
    assert (good["kind"], good["distribution"], good["version"]) == ("scheduler", "hpplug-good", "1.0")
    assert good["hooks"] == ["hpplug_lr_factor"]
    assert good["params"] == [{"name": "factor", "type": "float", "default": 0.5, "min": 0.01, "max": 1.0,
                               "choices": None, "help": "LR multiplier of the good plugin"}]
    assert "--good.factor  float = 0.5  (between 0.01 and 1.0)  LR multiplier of the good plugin" in cli["list"]["out"]


def test_parameters_show_in_run_help_validation_and_sweep_templates(cli: dict[str, Any]) -> None:
    help_text = " ".join(cli["help"]["out"].split())
    assert "good (scheduler; hpplug-good 1.0): --good.factor FLOAT LR multiplier of the good plugin (default 0.5; " \
           "between 0.01 and 1.0)" in help_text
    assert "--broken." not in help_text and "--typo." not in help_text
    line = one_line_error(cli["bad_value"])
    assert "--good.factor" in line and "between 0.01 and 1.0" in line
    template = cli["sweep_template"]["out"]
    assert cli["sweep_template"]["code"] == 0
    assert "good.factor:" in template and "LR multiplier of the good plugin" in template


def test_a_broken_import_is_listed_with_its_error_and_breaks_nothing_else(cli: dict[str, Any]) -> None:
    broken = rows(cli["list_json"])["broken"]
    assert broken["error"] == ("import of hpplug_broken:Broken failed: "
                               "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'")
    listed = [line for line in cli["list"]["out"].splitlines() if line.startswith("broken ")]
    assert len(listed) == 1 and "ERROR: import of hpplug_broken:Broken failed" in listed[0]
    assert cli["train_without_plugins"]["code"] == 0, cli["train_without_plugins"]["err"]
    assert " finished: " in cli["train_without_plugins"]["out"]
    line = one_line_error(cli["use_broken"])
    assert "plugin 'broken' (hpplug-broken 1.0) cannot be used" in line
    assert "No module named 'a_module_that_does_not_exist'" in line


def test_one_name_in_two_distributions_names_both(cli: dict[str, Any]) -> None:
    line = one_line_error(cli["use_twin"])
    assert "plugin 'twin'" in line and "dup-a and dup-b" in line and "uninstall" in line
    assert "dup-a and dup-b" in rows(cli["list_json"])["twin"]["error"]


def test_a_misspelled_hook_names_the_plugin_and_the_hook(cli: dict[str, Any]) -> None:
    line = one_line_error(cli["use_typo"])
    assert "plugin 'typo' (hpplug-typo 1.0)" in line
    assert "Typo.hpplug_lr_facter matches no hpplug hookspec: did you mean hpplug_lr_factor?" in line


def test_a_plugin_for_a_newer_hpplug_is_a_clear_error(cli: dict[str, Any]) -> None:
    line = one_line_error(cli["use_newer"])  # requires_hpplug on the class
    assert "plugin 'newer'" in line and f"needs hpplug>=99 (requires_hpplug), but hpplug {__version__}" in line
    line = one_line_error(cli["use_future"])  # Requires-Dist: hpplug>=99 in the package metadata
    assert f"hpplug-future 1.0 needs hpplug>=99, but hpplug {__version__} is installed" in line
    assert "upgrade hpplug" in line


def test_autoload_switch_loads_no_third_party_plugin(cli: dict[str, Any]) -> None:
    status = cli["off_list"]["status"]
    listed = rows(cli["off_list_json"])
    third_party = {name for name, row in listed.items() if row["distribution"] not in BUILTIN_DISTRIBUTIONS}
    assert {"good", "broken", "twin", "typo", "newer", "future"} <= third_party
    assert all(status[name] == "disabled" and listed[name]["error"] is None for name in third_party)
    assert all(status[name] == "active" for name in set(listed) - third_party)
    assert f"{DISABLE_AUTOLOAD_ENV} is set" in cli["off_list"]["out"]
    line = one_line_error(cli["off_use_good"])
    assert f"plugin 'good' (hpplug-good) is not loaded because {DISABLE_AUTOLOAD_ENV} is set" in line
    assert cli["off_train_builtin"]["code"] == 0, cli["off_train_builtin"]["err"]


def test_plugins_command_prints_each_status(cli: dict[str, Any]) -> None:
    """Needs ``status`` in cli.py's ``_describe`` and in the text listing."""
    assert rows(cli["list_json"])["good"]["status"] == "active"
    assert rows(cli["off_list_json"])["good"]["status"] == "disabled"
    lines = {line.split()[0]: line for line in cli["list"]["out"].splitlines() if line and not line[0].isspace()}
    assert lines["good"].endswith("active") and "ERROR: " in lines["typo"]
    off = {line.split()[0]: line for line in cli["off_list"]["out"].splitlines() if line and not line[0].isspace()}
    assert "disabled" in off["good"] and off["cosine"].endswith("active")
