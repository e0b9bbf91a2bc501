"""The hostile-input harness: every case asserts the same four things.

1. the exit code (2 for bad input, refused before anything trains),
2. one line on stderr, starting ``Error: ``, naming the problem, with no traceback,
3. nothing outside ``--output-dir`` changed,
4. no earlier run record was lost or altered.

``refused(...)`` runs the real command line in-process (fast: no training starts);
``refused_process(...)`` runs it as a separate process, for cases that need a fresh
interpreter (environment variables read at import, signals, kills).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch


EPOCH_LINE = re.compile(r"^epoch \d+/\d+  ")  # hpplug.console's line at each epoch's end


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def line(self) -> str:
        """The one line a refusal prints; fails the test if there is not exactly one (the
        progress lines of epochs finished before a failure aside)."""
        lines = [line for line in self.err.strip().splitlines() if line.strip() and not EPOCH_LINE.match(line)]
        assert len(lines) == 1, f"expected one line on stderr, got:\n{self.err}"
        assert lines[0].startswith("Error: "), lines[0]
        return lines[0]


VOLATILE = {"time", "train/samples_per_s"}  # what differs between two runs of the same training


def rows(folder: Path) -> list[dict]:
    """A record's metrics.jsonl without the wall-clock values; fails on any line that is not JSON."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


def assert_same_run(resumed: Path, baseline: Path) -> None:
    """A resumed run ended exactly like the uninterrupted ``baseline``: the same rows, weights
    and result, finished, with only ``checkpoint/`` left of its saves."""
    from safetensors.torch import load_file

    assert rows(resumed) == rows(baseline)
    a, b = (load_file(p / "checkpoint" / "model.safetensors") for p in (resumed, baseline))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["test/accuracy"] == json.loads((baseline / "summary.json").read_text())["test/accuracy"]
    assert sorted(p.name for p in resumed.glob("checkpoint*")) == ["checkpoint"], "leftovers tidied up"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` -> a hash of its content."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@pytest.fixture(scope="session")
def earlier_record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run's record folder with its checkpoint (made once, copied into each
    test's output dir)."""
    from hpplug import discovery, engine
    from hpplug.run_args import build_config

    root = tmp_path_factory.mktemp("earlier")
    core = {"epochs": 1, "wandb_mode": "disabled", "output_dir": str(root / "runs"), "checkpoint_every": "1epoch"}
    config, entries = build_config(discovery.discover(), [], {}, core)
    result = engine.run(config, entries, show_progress=False)
    assert result.status == "finished"
    return Path(result.record_dir)


@dataclass
class Sandbox:
    """A working folder with ``runs/`` (holding one earlier, finished record) beside
    other files, so a case can prove that it touched nothing it should not have."""

    root: Path
    runs: Path
    earlier: Path

    def __post_init__(self) -> None:
        self.before = snapshot(self.root)

    def assert_untouched(self, allowed: Path | None = None) -> None:
        """Nothing changed or added outside ``allowed`` (default: nothing at all), and every
        file that existed before (the earlier record included) is unchanged."""
        after = snapshot(self.root)
        for name, digest in self.before.items():
            assert after.get(name) == digest, f"{name} was changed or removed"
        prefix = None if allowed is None else str(allowed.relative_to(self.root))
        earlier = str(self.earlier.relative_to(self.root))
        for name in set(after) - set(self.before):
            assert prefix is not None and name.startswith(prefix + os.sep), f"{name} was created"
            assert not name.startswith(earlier + os.sep), f"{name} was written into the earlier record"
        for stray in self.root.parent.iterdir():
            assert stray == self.root or stray.name in self.outside, f"{stray} was created outside"

    @property
    def outside(self) -> set[str]:
        return getattr(self, "_outside", set())


@pytest.fixture
def sandbox(tmp_path: Path, earlier_record: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    root = tmp_path / "work"
    runs = root / "runs"
    runs.mkdir(parents=True)
    shutil.copytree(earlier_record, runs / earlier_record.name)
    (root / "notes.txt").write_text("a file of the user's that must survive\n")
    monkeypatch.chdir(root)
    box = Sandbox(root, runs, runs / earlier_record.name)
    box._outside = {p.name for p in tmp_path.iterdir()}
    return box


@pytest.fixture
def refused(hpplug_cli: Callable[..., tuple[int, str, str]], sandbox: Sandbox) -> Callable[..., Outcome]:
    """Run ``hpplug ARGS`` in-process in the sandbox; assert a clean refusal (exit 2, one
    line, no traceback, nothing touched) and return the outcome for message checks."""

    def invoke(*argv: str, code: int = 2, allowed: Path | None = None) -> Outcome:
        outcome = Outcome(*hpplug_cli(*argv))
        assert "Traceback" not in outcome.err + outcome.out, outcome.err
        assert outcome.code == code, (outcome.code, outcome.err)
        outcome.line  # noqa: B018 - asserts exactly one "Error: " line
        sandbox.assert_untouched(allowed)
        return outcome

    return invoke


@pytest.fixture
def refused_process(sandbox: Sandbox) -> Callable[..., Outcome]:
    """As ``refused``, in a fresh ``python -m hpplug`` process with extra environment."""

    def invoke(*argv: str, env: dict[str, str] | None = None, code: int = 2,
               allowed: Path | None = None) -> Outcome:
        proc = subprocess.run([sys.executable, "-m", "hpplug", *argv], capture_output=True, text=True,
                              cwd=sandbox.root, env={**os.environ, **(env or {})}, timeout=300)
        outcome = Outcome(proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in outcome.err + outcome.out, outcome.err
        assert outcome.code == code, (outcome.code, outcome.err)
        outcome.line  # noqa: B018
        sandbox.assert_untouched(allowed)
        return outcome

    return invoke
