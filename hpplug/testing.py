"""pytest plugin shipped with hpplug for plugin authors (entry point ``pytest11``).

Installed with hpplug, it is active in every pytest run of that environment: a plugin
package's tests use its fixtures without a ``conftest.py``. With
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load it by its entry-point name: ``pytest -p hpplug``
(not ``-p hpplug.testing`` or ``pytest_plugins = ["hpplug.testing"]``, which register it a
second time under another name when autoload is on).

Fixtures:

- ``hpplug_register``: ``hpplug_register("name", MyPlugin)`` makes a ``Plugin`` subclass
  usable under that name for the rest of the test, without installing a package, and
  removes it afterwards. It wins over an installed plugin of the same name, so a package's
  tests exercise the class in its source tree. It runs the same checks as discovery
  (hook names and arguments, ``params``, ``requires_hpplug``) and raises
  ``hpplug.HpplugError`` at once when one fails.
- ``hpplug_train``: ``hpplug_train(["name", ...], params={"name": {"p": 0.5}}, **options)``
  trains a tiny run in-process on the bundled ``digits`` data set (1 epoch, W&B disabled,
  everything written under the test's ``tmp_path``) and returns its
  :class:`hpplug.engine.RunResult`: ``status``, ``summary`` (the last epoch's metrics,
  e.g. ``summary["lr"]``, ``summary["test/accuracy"]``) and ``record_dir``. ``options`` are
  ``hpplug run``'s options with underscores (``epochs=2``, ``batch_size=32``, ``lr=0.05``).
  Bad plugin names or values raise ``hpplug.HpplugError`` with the CLI's message.
- ``hpplug_cli``: ``hpplug_cli("run", "--plugin", "name", "--epochs", "1")`` runs the real
  command line in-process and returns ``(exit_code, stdout, stderr)``.

:func:`read_metrics` returns every line a run logged (``step``, ``train/loss``, ``lr``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest


def read_metrics(result: Any) -> list[dict[str, Any]]:
    """The metrics a run logged, in order, from its local record (``metrics.jsonl``)."""
    from hpplug import record

    return record.read_jsonl(Path(result.record_dir) / record.METRICS, "the run's record is damaged")[0]


@pytest.fixture
def hpplug_register() -> Any:
    from hpplug import discovery

    names: list[str] = []

    def register(name: str, cls: type) -> None:
        discovery.register_local(name, cls)
        names.append(name)

    yield register
    for name in names:
        discovery.unregister_local(name)


@pytest.fixture
def hpplug_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    from hpplug.cli import main

    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def hpplug_train(tmp_path: Path) -> Callable[..., Any]:
    from hpplug import discovery, engine
    from hpplug.run_args import build_config

    def train(plugins: list[str] | tuple[str, ...] = (), params: dict[str, dict[str, Any]] | None = None,
              **options: Any) -> engine.RunResult:
        core = {"epochs": 1, "wandb_mode": "disabled", "output_dir": str(tmp_path / "runs"),
                "data_root": str(tmp_path / "data"), **options}
        config, entries = build_config(discovery.discover(), list(plugins), params or {}, core)
        return engine.run(config, entries, show_progress=False)

    return train
