"""No test here downloads: HPPLUG_OFFLINE=1, as in hpplug's own tests."""

from __future__ import annotations

from typing import Callable

import pytest

from hpplug import HpplugError


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPPLUG_OFFLINE", "1")


@pytest.fixture
def refused() -> Callable[..., str]:
    """``refused(fn, *args)``: calls ``fn``, which must raise a one-line HpplugError; returns the line."""

    def call(fn: Callable[..., object], *args: object) -> str:
        with pytest.raises(HpplugError) as caught:
            fn(*args)
        line = str(caught.value)
        assert line.strip() and "\n" not in line, f"not one line: {line!r}"
        return line

    return call
