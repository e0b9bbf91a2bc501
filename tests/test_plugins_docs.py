"""The plugin author guide (docs/plugins.md) covers every hook and every part of the API,
and its worked example runs as printed."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

from hpplug import Batch, Param, Plugin, Progress, hookspecs
from hpplug.testing import read_metrics

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TEXT = GUIDE.read_text()
HOOKSPECS = {name: f for name, f in vars(hookspecs).items() if name.startswith("hpplug_") and hasattr(f, "hpplug_spec")}


def section(heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", TEXT, re.MULTILINE)
    assert match, f"docs/plugins.md has no section {heading!r}"
    level = len(match.group(1))
    end = re.search(rf"^#{{1,{level}}} ", TEXT[match.end():], re.MULTILINE)
    return TEXT[match.end():match.end() + end.start()] if end else TEXT[match.end():]


def code_block(first_line: str) -> str:
    """The fenced code block whose first line is ``first_line``."""
    match = re.search(rf"```\w*\n({re.escape(first_line)}\n.*?)```", TEXT, re.DOTALL)
    assert match, f"docs/plugins.md has no code block starting with {first_line!r}"
    return match.group(1)


def test_there_are_hookspecs_to_check() -> None:
    assert len(HOOKSPECS) >= 10 and "hpplug_lr_factor" in HOOKSPECS


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_every_hookspec_has_a_section_with_when_arguments_returns_and_composition(name: str) -> None:
    text = section(f"`{name}`")
    for part in ("**When**", "**Arguments**", "**Returns**", "**Composition**"):
        assert part in text, f"the section on {name} says nothing under {part}"
    for argument in inspect.signature(HOOKSPECS[name]).parameters:
        assert f"`{argument}`" in text, f"the section on {name} does not describe its argument {argument!r}"
    first_result = HOOKSPECS[name].hpplug_spec["firstresult"]
    assert ("first result wins" in text.lower()) == first_result, (
        f"{name}: the guide must say 'first result wins' exactly for firstresult hooks")
    assert name in section("Hooks").split("\n### ")[0], f"{name} is missing from the order of hooks"


def test_no_section_documents_a_hook_that_does_not_exist() -> None:
    documented = set(re.findall(r"^### `(hpplug_\w+)`", TEXT, re.MULTILINE))
    assert documented == set(HOOKSPECS)


def public(cls: type) -> list[str]:
    return [n for n in vars(cls) if not n.startswith("_")]


@pytest.mark.parametrize(("owner", "names"), [
    ("Plugin", public(Plugin)),
    ("Param", [f.name for f in dataclasses.fields(Param)]),
    ("Progress", [f.name for f in dataclasses.fields(Progress)] + ["total_updates", "epoch_fraction"]),
    ("Batch", [f.name for f in dataclasses.fields(Batch)]),
])
def test_every_part_of_the_plugin_api_is_documented(owner: str, names: list[str]) -> None:
    missing = [n for n in names if f"`{n}`" not in TEXT and f"`{n}(" not in TEXT]
    assert not missing, f"docs/plugins.md does not document {owner}: {missing}"


@pytest.mark.parametrize("concept", [
    "slot", "composable", "requires_hpplug", "state_dict", "load_state_dict", "tryfirst", "trylast",
    "hpplug_register", "hpplug_train", "hpplug_cli", "read_metrics", "HPPLUG_DISABLE_PLUGIN_AUTOLOAD",
    "hpplug new-plugin", "hpplug plugins", "[project.entry-points.hpplug]", "HpplugError", "pytest11",
])
def test_the_guide_explains(concept: str) -> None:
    assert concept in TEXT


def test_the_worked_example_runs_as_printed(hpplug_register, hpplug_train, monkeypatch) -> None:
    pyproject = tomllib.loads(code_block("# pyproject.toml (the parts that matter)"))
    assert pyproject["project"]["entry-points"]["hpplug"] == {"noise": "hpplug_noise:Noise"}
    module = types.ModuleType("hpplug_noise")
    exec(compile(code_block("# hpplug_noise/__init__.py"), "hpplug_noise/__init__.py", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "hpplug_noise", module)
    tests: dict[str, object] = {}
    exec(compile(code_block("# tests/test_noise.py"), "tests/test_noise.py", "exec"), tests)
    fixtures = {"hpplug_register": hpplug_register, "hpplug_train": hpplug_train}
    names = [n for n in tests if n.startswith("test_")]
    assert len(names) == 2
    for name in names:
        test = tests[name]
        test(**{arg: fixtures[arg] for arg in inspect.signature(test).parameters})
    result = hpplug_train(["noise"], params={"noise": {"std": 0.3}})
    assert result.status == "finished" and result.summary["epoch"] == 1
    assert read_metrics(result)[-1]["test/accuracy"] == result.summary["test/accuracy"]


def test_the_hook_reference_is_generated_from_the_hookspec_docstrings() -> None:
    """One source: docs/plugins.md's reference is the hookspecs' docstrings, rendered."""
    from hpplug import hookdocs

    assert hookdocs.spliced(TEXT) == TEXT, "docs/plugins.md is out of date: run python -m hpplug.hookdocs"
    assert all(f"### `{name}`" in TEXT for name in HOOKSPECS)
