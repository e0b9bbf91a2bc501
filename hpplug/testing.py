"""pytest plugin shipped with hpplug (entry point ``pytest11``) for plugin authors.

Fixtures:

- ``hpplug_register``: ``hpplug_register("name", MyPlugin)`` makes a plugin class usable
  by name for the rest of the test, without installing a package; removed afterwards.
- ``hpplug_train``: ``hpplug_train(["name", ...], epochs=1, **options)`` trains a tiny run
  on the bundled ``digits`` data set in-process (W&B off unless ``wandb_mode`` is given)
  and returns the :class:`hpplug.engine.RunResult`.
- ``hpplug_cli``: ``hpplug_cli("run", "--plugin", "x")`` runs the real command line
  in-process and returns ``(exit_code, stdout, stderr)``.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest


@pytest.fixture
def hpplug_register() -> Any:
    from hpplug import manager

    names: list[str] = []

    def register(name: str, cls: type) -> None:
        manager.register_local(name, cls)
        names.append(name)

    yield register
    for name in names:
        manager.unregister_local(name)


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
def hpplug_train(tmp_path: Any) -> Callable[..., Any]:
    from hpplug import engine, manager
    from hpplug.cli import build_config

    def train(plugins: list[str] | tuple[str, ...] = (), params: dict[str, dict[str, Any]] | None = None,
              **options: Any) -> engine.RunResult:
        core = {"epochs": 1, "wandb_mode": "disabled", "output_dir": str(tmp_path / "runs"),
                "data_root": str(tmp_path / "data"), **options}
        config, entries = build_config(manager.discover(), list(plugins), params or {}, core)
        return engine.run(config, entries, show_progress=False)

    return train
