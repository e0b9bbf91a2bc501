"""``hpplug new-plugin``: the package it writes installs, passes its own tests and trains.

What CI proves for a stranger: scaffold, pip install (into a private ``--target`` folder, so
this environment is not changed), run the package's own tests, ``hpplug run --plugin NAME``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpplug import __version__
from hpplug.scaffold import names_for

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

# Build with this environment's setuptools when it has one (fast, offline); else let pip fetch it.
NO_BUILD_ISOLATION = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []


def env_with(site: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_names_follow_the_package_conventions() -> None:
    assert names_for("my-thing") == {"name": "my-thing", "dist": "hpplug-my-thing", "module": "hpplug_my_thing",
                                     "cls": "MyThing", "hpplug_version": __version__}
    assert names_for("x2")["cls"] == "X2"


@pytest.mark.slow
def test_a_new_plugin_installs_passes_its_tests_and_trains(tmp_path: Path) -> None:
    made = subprocess.run([sys.executable, "-m", "hpplug", "new-plugin", "my-thing"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    root = tmp_path / "hpplug-my-thing"
    assert "pip install -e hpplug-my-thing" in made.stdout
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "hpplug_my_thing/__init__.py", "pyproject.toml", "tests/test_my_thing.py"]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == "hpplug-my-thing"
    assert project["dependencies"] == [f"hpplug>={__version__}"]
    assert project["entry-points"]["hpplug"] == {"my-thing": "hpplug_my_thing:MyThing"}
    assert "--my-thing.final_factor" in (root / "README.md").read_text()

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *NO_BUILD_ISOLATION,
                    "--disable-pip-version-check", "--target", str(site), str(root)],
                   check=True, capture_output=True, text=True)

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                           cwd=root, env=env_with(site), capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "3 passed" in tests.stdout

    runs = tmp_path / "runs"
    trained = subprocess.run([sys.executable, "-m", "hpplug", "run", "--plugin", "my-thing",
                              "--my-thing.final_factor", "0.5", "--epochs", "1", "--wandb-mode", "disabled",
                              "--output-dir", str(runs)],
                             cwd=tmp_path, env=env_with(site), capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    (record,) = runs.iterdir()
    config = json.loads((record / "config.json").read_text())
    assert config["plugin_versions"]["my-thing"] == "hpplug-my-thing==0.1.0"
    summary = json.loads((record / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert 0.05 < summary["lr"] < 0.06  # the last update's LR: near final_factor * lr = 0.05


@pytest.mark.parametrize(("argv", "problem"), [
    (["My_Thing"], "plugin name 'My_Thing': use lowercase letters, digits and hyphens"),
    (["2d"], "plugin name '2d'"),
    (["hpplug-noise"], "`hpplug new-plugin noise` writes the package hpplug-noise"),
    (["cosine"], "a plugin named 'cosine' is already installed (hpplug-schedulers)"),
])
def test_a_bad_name_is_one_line_with_exit_code_2(hpplug_cli, tmp_path, argv, problem) -> None:
    code, _, err = hpplug_cli("new-plugin", *argv, "--directory", str(tmp_path))
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("Error: ") and problem in line
    assert not list(tmp_path.iterdir())


def test_an_existing_folder_is_never_overwritten(hpplug_cli, tmp_path) -> None:
    (tmp_path / "hpplug-mine").mkdir()
    (tmp_path / "hpplug-mine" / "keep.txt").write_text("mine")
    code, _, err = hpplug_cli("new-plugin", "mine", "--directory", str(tmp_path))
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "hpplug-mine already exists" in line
    assert [p.name for p in (tmp_path / "hpplug-mine").iterdir()] == ["keep.txt"]


def test_the_generated_module_is_a_valid_plugin(hpplug_cli, hpplug_register, tmp_path, monkeypatch) -> None:
    code, out, _ = hpplug_cli("new-plugin", "shiny-new", "--directory", str(tmp_path))
    assert code == 0 and "Wrote" in out
    monkeypatch.syspath_prepend(str(tmp_path / "hpplug-shiny-new"))
    from hpplug_shiny_new import ShinyNew  # noqa: PLC0415 - written by the command above

    hpplug_register("shiny-new", ShinyNew)  # the same checks as discovery
    assert ShinyNew.__doc__ and ShinyNew.params["final_factor"].help
    assert ShinyNew().hpplug_lr_factor.__doc__
