"""What ``hpplug sweep`` shows, and the ``sweep`` extra it needs.

The missing extra is a real import failure in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

COMMAND = ["${env}", "hpplug", "run", "${args}"]


# --- the sweep extra -----------------------------------------------------------------------

BLOCKER = '''
import sys


class Missing:
    """As if these were not installed: their import fails like any missing module's."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Missing())
'''


def without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment whose Python cannot import ``modules`` (a sitecustomize on PYTHONPATH)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(BLOCKED=set(modules)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_sweep_without_the_extra_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"method": "grid", "metric": {"name": "val/accuracy", "goal": "maximize"},
                                    "command": COMMAND, "parameters": {"lr": {"values": [0.1]}}}))
    env = without(tmp_path, "sweeps")
    check = subprocess.run([sys.executable, "-c", "import sweeps"], env=env, capture_output=True, text=True)
    assert "No module named 'sweeps'" in check.stderr  # the blocker works: a real import failure
    out = subprocess.run([sys.executable, "-m", "hpplug", "sweep", str(path), "--dir", str(tmp_path / "sw")],
                         env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "Error: hpplug sweep needs W&B's sweep engine, the 'sweep' extra of hpplug: pip install 'hpplug[sweep]'"]
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_training_needs_nothing_of_the_extra(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "hpplug", "run", "--epochs", "1", "--wandb-mode", "disabled",
                          "--output-dir", str(tmp_path / "runs")],
                         env={**without(tmp_path, "sweeps", "matplotlib"), "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert " finished: " in out.stdout
