"""Issue 13's fast start: listings, help and completion from the plugin metadata cache.

The cache must never change what a command prints (cold or warm, damaged or edited), must
follow a plugin being installed or edited, and must keep torch, Accelerate and W&B out of
the process that answers.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpplug import plugin_cache

COMMANDS = [("plugins",), ("plugins", "--json"), ("plugins", "crop"), ("plugins", "cosine", "--json"),
            ("run", "--help"), ("run", "--plugin", "cosine", "--help"), ("run", "--model", "timm/resnet18", "--help")]


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(plugin_cache.CACHE_ENV, str(folder))
    return folder


def outputs(hpplug_cli) -> list[tuple[int, str, str]]:
    return [hpplug_cli(*argv) for argv in COMMANDS]


def test_cold_and_warm_cache_print_the_same(hpplug_cli, cache_dir: Path) -> None:
    cold = outputs(hpplug_cli)
    (path,) = cache_dir.iterdir()
    assert path == plugin_cache.cache_file()
    warm = outputs(hpplug_cli)
    assert warm == cold and all(code == 0 and err == "" for code, _, err in cold)
    entries = plugin_cache.catalog()
    assert entries["cosine"].cls is None and entries["cosine"].active  # read from the cache, not imported
    assert "In training, pads every image" in entries["crop"].info.card


def test_a_run_imports_the_real_plugins(hpplug_cli, cache_dir: Path, tmp_path: Path) -> None:
    """Even when the command line looks like a request for help (``--name --help`` names the run
    "--help"), so that its command was built from the cache."""
    hpplug_cli("plugins")
    assert plugin_cache.catalog()["cosine"].cls is None
    code, out, err = hpplug_cli("run", "--plugin", "cosine", "--epochs", "1", "--wandb-mode", "disabled",
                                "--output-dir", str(tmp_path / "runs"), "--name", "--help")
    assert code == 0, err
    (record,) = (tmp_path / "runs").iterdir()
    assert json.loads((record / "config.json").read_text())["name"] == "--help"
    assert json.loads((record / "summary.json").read_text())["status"] == "finished"


def damaged(path: Path) -> list[bytes]:
    """Ways a cache file is not what hpplug wrote: each must be ignored and rebuilt."""
    good = json.loads(path.read_bytes())
    edited = json.loads(path.read_bytes())
    row = next(r for r in edited["entries"] if r["name"] == "cosine")
    row["info"]["params"][0]["help"] = "edited by hand"
    foreign_type = json.loads(path.read_bytes())
    row = next(r for r in foreign_type["entries"] if r["name"] == "cosine")
    row["info"]["params"][0]["type"] = "__import__('os').system"
    missing = {**good, "entries": good["entries"][1:]}
    return [b"", b"\x00\xff garbage", path.read_bytes()[:200], b"[]", b'{"format": 1}', b"null",
            b"[" * 100000, json.dumps({**good, "key": "0" * 64}).encode(), json.dumps(edited).encode(),
            json.dumps(foreign_type).encode(), json.dumps(missing).encode(),
            json.dumps({**good, "entries": [{"name": "cosine", "import": "yes"}]}).encode(),
            json.dumps({**good, "entries": good["entries"] + good["entries"][:1]}).encode(),
            b" " * (plugin_cache.MAX_BYTES + 10)]


def test_a_damaged_or_edited_cache_is_rebuilt_silently(hpplug_cli, cache_dir: Path) -> None:
    reference = outputs(hpplug_cli)
    path = plugin_cache.cache_file()
    good = path.read_bytes()
    for number, data in enumerate(damaged(path)):
        path.write_bytes(data)
        assert outputs(hpplug_cli) == reference, number
        assert json.loads(path.read_bytes())["key"] == json.loads(good)["key"], number  # rewritten


def test_an_unwritable_cache_folder_only_costs_time(hpplug_cli, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(plugin_cache.CACHE_ENV, str(blocker / "cache"))
    code, out, err = hpplug_cli("plugins", "--json")
    assert code == 0 and err == "" and "cosine" in out


# --- whole processes ------------------------------------------------------------------------

PROBE = """
import sys
from hpplug.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print("IMPORTED", sorted(m for m in ('torch', 'accelerate', 'wandb', 'sklearn', 'hpplug_fresh') if m in sys.modules))
"""


def hpplug(*argv: str, env: dict[str, str], probe: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", PROBE, *argv] if probe else [sys.executable, "-m", "hpplug", *argv]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_warm_listing_help_and_completion_import_nothing_heavy(tmp_path: Path) -> None:
    env = {**os.environ, plugin_cache.CACHE_ENV: str(tmp_path / "cache")}
    cold = hpplug("plugins", env=env, probe=True)
    assert "'torch'" in cold.stdout.splitlines()[-1]  # the first listing imports the plugins
    for argv, extra in [(["plugins"], {}), (["plugins", "crop", "--json"], {}), (["run", "--help"], {}),
                        (["run", "--plugin", "cosine", "--help"], {}),
                        ([], {"_HPPLUG_COMPLETE": "bash_complete", "COMP_WORDS": "hpplug run --plugin cos",
                              "COMP_CWORD": "3"}),
                        ([], {"_HPPLUG_COMPLETE": "bash_complete", "COMP_WORDS": "hpplug run --cosine.e",
                              "COMP_CWORD": "2"})]:
        done = hpplug(*argv, env={**env, **extra}, probe=True)
        assert done.stdout.splitlines()[-1] == "IMPORTED []", (argv, extra, done.stdout[-300:])
        if extra:
            assert done.stdout.splitlines()[0] in ("plain,cosine", "plain,--cosine.eta_min")
    warm = hpplug("plugins", env=env, probe=True)
    assert warm.stdout.splitlines()[:-1] == cold.stdout.splitlines()[:-1]


PLUGIN = '''
"""A plugin written by the test."""
from hpplug import Param, Plugin, hookimpl
from pathlib import Path


class Fresh(Plugin):
    kind = "regularizer"
    params = {{"strength": Param(float, 0.5, "{help}", min=0.0)}}
    {extra}

    @hookimpl
    def hpplug_adjust_config(self, config):
        pass
'''


def install(site: Path, help: str, extra: str = "") -> None:
    """A distribution ``hpplug-fresh`` 1.0 with plugin ``fresh`` in the folder ``site``."""
    package = site / "hpplug_fresh"
    package.mkdir(parents=True, exist_ok=True)
    source = package / "__init__.py"
    source.write_text(PLUGIN.format(help=help, extra=extra))
    stamp = source.stat().st_mtime_ns + 10**9  # an edit within the file system's clock tick still counts
    os.utime(source, ns=(stamp, stamp))
    info = site / "hpplug_fresh-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hpplug-fresh\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hpplug]\nfresh = hpplug_fresh:Fresh\n")


@pytest.mark.slow
def test_installing_or_editing_a_plugin_invalidates_the_cache(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    env = {**os.environ, plugin_cache.CACHE_ENV: str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}

    def row() -> dict | None:
        rows = {r["name"]: r for r in json.loads(hpplug("plugins", "--json", env=env).stdout)}
        return rows.get("fresh")

    assert row() is None
    install(site, "first help")
    assert row()["params"][0]["help"] == "first help"
    install(site, "edited help")  # an editable install being edited: same version, new source
    assert row()["params"][0]["help"] == "edited help"
    warm = hpplug("plugins", "fresh", env=env, probe=True)
    assert warm.stdout.splitlines()[-1] == "IMPORTED []" and "edited help" in warm.stdout
    install(site, "a path", extra='params = {"root": Param(Path, Path("/tmp"), "a path")}')  # not JSON: imported
    assert row()["params"] == [{"name": "root", "type": "Path", "default": "/tmp", "min": None, "max": None,
                                "choices": None, "help": "a path"}]
    (path,) = (tmp_path / "cache").iterdir()
    assert {"name": "fresh", "import": True} in json.loads(path.read_text())["entries"]
    assert hpplug("plugins", "fresh", env=env, probe=True).stdout.splitlines()[-1] == "IMPORTED ['hpplug_fresh']"
    for path in (site / "hpplug_fresh-1.0.dist-info").iterdir():
        path.unlink()
    (site / "hpplug_fresh-1.0.dist-info").rmdir()  # uninstalled
    assert row() is None


@pytest.mark.slow
def test_a_one_epoch_digits_run_process_ends_at_once_with_everything_saved(tmp_path: Path) -> None:
    """The process ends without tearing its modules down (hpplug.exiting.exit_now): what W&B and the
    record hold must be complete, and the exit status the run's. scikit-learn is never imported."""
    from hpplug.wandb_file import find_run_files, read_run

    env = {**os.environ, "WANDB_SILENT": "true", plugin_cache.CACHE_ENV: str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpplug", "run", "--epochs", "1",
                           "--wandb-mode", "offline", "--output-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert "torch" in imported and "sklearn" not in imported
    assert "W&B run saved offline; upload it with: wandb sync" in done.stdout.splitlines()[-1]
    (record,) = [p for p in (tmp_path / "runs").iterdir() if p.name != "wandb"]
    summary = json.loads((record / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 1
    (run_file,) = find_run_files(tmp_path / "runs" / "wandb")
    run = read_run(run_file)
    assert run.exit_code == 0 and run.history[-1]["test/accuracy"] == summary["test/accuracy"]
    assert run.summary["test/accuracy"] == {"max": summary["test/accuracy"]}  # its best value


def test_a_module_imported_meanwhile_is_there_after_the_block_and_a_failure_waits(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """engine.imported_meanwhile: torch._dynamo is imported while W&B's service starts."""
    from hpplug.engine import imported_meanwhile

    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(0.2)\nVALUE = 42\n")
    (tmp_path / "broken_on_import.py").write_text("raise RuntimeError('broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with imported_meanwhile("slow_to_import"):
        pass
    assert sys.modules["slow_to_import"].VALUE == 42
    with imported_meanwhile("broken_on_import"):  # the failure is the real import's to raise
        pass
    with pytest.raises(RuntimeError, match="broken"):
        importlib.import_module("broken_on_import")
    monkeypatch.delitem(sys.modules, "slow_to_import")
