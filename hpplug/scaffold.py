"""``hpplug new-plugin NAME``: write a complete plugin package to start from.

``hpplug-NAME/`` holds a ``pyproject.toml`` with the ``hpplug`` entry point, the module
``hpplug_NAME`` with one documented ``Plugin`` subclass (one hook, one parameter), a README
and a test that trains with the plugin through the ``hpplug.testing`` fixtures. It passes
as written: ``pip install -e hpplug-NAME && python -m pytest hpplug-NAME``.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from string import Template

import click

from hpplug import __version__
from hpplug.errors import HpplugError
from hpplug.config import Folder

PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$name: a plugin for hpplug."
readme = "README.md"
requires-python = ">=3.10"
# hpplug checks this when it loads the plugin: an older hpplug reports a clear error.
dependencies = ["hpplug>=$hpplug_version"]

[project.optional-dependencies]
test = ["pytest>=8"]

# How hpplug finds the plugin: <plugin name> = "<module>:<Plugin subclass>".
[project.entry-points.hpplug]
$name = "$module:$cls"

[tool.setuptools]
packages = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
''')

MODULE = Template('''\
"""``$name``: a plugin for hpplug.

Written by ``hpplug new-plugin $name`` as a starting point. As generated it decays the
learning rate linearly from its base value to ``final_factor`` times that over the run.
Replace the hook with your method: hpplug's plugin guide (docs/plugins.md) describes
every hook, when it fires, its arguments and what it may return.
"""

from __future__ import annotations

from hpplug import Param, Plugin, Progress, hookimpl


class $cls(Plugin):
    """Linear LR decay from ``base_lr`` to ``final_factor * base_lr`` over the run."""

    # A family for `hpplug plugins`: scheduler, regularizer, augmentation, batch-policy, ...
    kind = "scheduler"
    # What the plugin owns. Two selected plugins with the same slot are an error unless
    # all but one set `composable = True` (a warmup composes with a decay schedule).
    slot = "lr-schedule"
    composable = False
    # Declared once: each becomes `--$name.<param>` on `hpplug run`, is validated (type and
    # range), is listed by `hpplug plugins` and appears in sweep templates. The value
    # arrives as an attribute: `self.final_factor`.
    params = {
        "final_factor": Param(float, 0.1, "LR multiplier reached at the end of the run", min=0.0, max=1.0),
    }

    @hookimpl
    def hpplug_lr_factor(self, progress: Progress, base_lr: float) -> float:
        """Before every optimizer update: the multiplier of ``base_lr`` for that update.

        A pure function of ``progress``, so the LR is the same on any number of processes
        and after a resume. hpplug multiplies the factors of all selected plugins.
        """
        done = progress.update / progress.total_updates
        return 1.0 - (1.0 - self.final_factor) * done
''')

TEST = Template('''\
"""Tests of $name: the hook on its own (fast), then tiny real training runs with it.

``hpplug_register`` and ``hpplug_train`` come from hpplug's pytest plugin
(``hpplug.testing``), active wherever hpplug is installed.
"""

from __future__ import annotations

import pytest

from hpplug import Progress
from hpplug.manager import discover
from $module import $cls


def at(update: int) -> Progress:
    return Progress(update=update, epoch=update // 10, updates_per_epoch=10, epochs=2)


def test_the_factor_falls_linearly_from_1_to_final_factor() -> None:
    plugin = $cls(final_factor=0.2)
    assert plugin.hpplug_lr_factor(at(0), base_lr=0.1) == 1.0
    assert plugin.hpplug_lr_factor(at(10), base_lr=0.1) == pytest.approx(0.6)
    assert plugin.hpplug_lr_factor(at(20), base_lr=0.1) == pytest.approx(0.2)


def test_a_training_run_uses_the_decayed_lr(hpplug_register, hpplug_train) -> None:
    hpplug_register("$name", $cls)  # this source tree's class, installed or not
    plain = hpplug_train([], lr=0.1)
    decayed = hpplug_train(["$name"], params={"$name": {"final_factor": 0.2}}, lr=0.1)
    assert plain.status == decayed.status == "finished"
    assert plain.summary["lr"] == pytest.approx(0.1)  # the LR of the last update
    assert 0.02 < decayed.summary["lr"] < 0.03


def test_hpplug_finds_the_installed_entry_point() -> None:
    entry = discover().get("$name")
    assert entry is not None, "$name is not installed: run pip install -e . first"
    assert entry.error is None, entry.error
    assert entry.cls.__name__ == "$cls"
''')

README = Template('''\
# $dist

`$name`: a plugin for [hpplug](https://pypi.org/project/hpplug/). As generated it decays the
learning rate linearly from its base value to `final_factor` times that over the run; edit
`$module/__init__.py` to make it yours (hpplug's `docs/plugins.md` describes every hook).

| parameter | type | default | meaning |
|---|---|---|---|
| `final_factor` | float in [0, 1] | 0.1 | LR multiplier reached at the end of the run |

```bash
pip install -e .                      # registers the entry point: hpplug now knows `$name`
python -m pytest                      # the tests train tiny runs with the plugin
hpplug plugins                        # lists $name, its hook and its parameter
hpplug run --plugin $name --$name.final_factor 0.1 --epochs 3
```

Publish: `python -m build && twine upload dist/*`; users then `pip install $dist`.
''')


def names_for(name: str) -> dict[str, str]:
    """``my-thing`` -> distribution ``hpplug-my-thing``, module ``hpplug_my_thing``, class ``MyThing``."""
    return {"name": name, "dist": f"hpplug-{name}", "module": "hpplug_" + name.replace("-", "_"),
            "cls": "".join(part.capitalize() for part in name.split("-")), "hpplug_version": __version__}


def write_plugin(name: str, parent: Path) -> Path:
    """Write ``parent/hpplug-NAME/`` and return it; raises HpplugError for a bad NAME."""
    from hpplug.discovery import GROUP, NAME_PATTERN, NAME_RULE  # here: `hpplug --help` needs no torch

    if not NAME_PATTERN.match(name):  # so NAME can never be a path: no separator, no dot
        raise HpplugError(f"plugin name {name[:80]!r}: {NAME_RULE}, e.g. my-thing")
    if name.startswith("hpplug-"):
        raise HpplugError(f"NAME is the plugin's own name: `hpplug new-plugin {name[7:]}` "
                          f"writes the package {name}")
    taken = {ep.name: ep.dist.name if ep.dist else "?" for ep in metadata.entry_points(group=GROUP)}
    if name in taken:
        raise HpplugError(f"a plugin named {name!r} is already installed ({taken[name]}); choose another name")
    n = names_for(name)
    root = parent / n["dist"]
    if root.exists():
        raise HpplugError(f"{root} already exists; remove it or choose another name or --directory")
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{n['module']}/__init__.py": MODULE,
        f"tests/test_{n['module'][len('hpplug_'):]}.py": TEST,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.substitute(n))
    return root


@click.command("new-plugin", short_help="Write a new plugin package: entry point, module, README, test.")
@click.argument("name")
@click.option("--directory", "-d", default=".", show_default=True,
              type=Folder(writable=True), help="Folder to write hpplug-NAME/ in.")
def new_plugin_command(name: str, directory: str) -> None:
    """Write a plugin package hpplug-NAME/ ready to test, install and publish.

    It holds a pyproject.toml with the entry point, the plugin module (a Plugin subclass
    with one hook and one parameter), a README and a test that passes as written. NAME is
    the plugin's name on the command line: lowercase letters, digits and hyphens.
    """
    root = write_plugin(name, Path(directory))
    n = names_for(name)
    click.echo(f"Wrote {root}/: plugin {name} (class {n['cls']} in {n['module']}/__init__.py)\n"
               f"Next:\n"
               f"  pip install -e {root}\n"
               f"  python -m pytest {root}\n"
               f"  hpplug run --plugin {name} --epochs 1")
