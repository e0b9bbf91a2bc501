"""The error types the CLI turns into one line: bad input (exit 2) and a failing plugin (exit 1)."""

from __future__ import annotations


class HpplugError(Exception):
    """Bad input or environment: the message says what was wrong and what would be right."""


class PluginError(Exception):
    """A plugin's code raised, or a hook returned what it must not: names the plugin and where.

    Not an :class:`HpplugError`: the user's input was fine, the plugin is at fault.
    """

    def __init__(self, plugin: str, hook: str, problem: str) -> None:
        super().__init__(f"plugin {plugin!r} failed in {hook}: {problem}")
        self.plugin, self.hook, self.problem = plugin, hook, problem


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The message on one line; prefixed with the exception type unless it is ours."""
    try:
        text = " ".join(str(exc).split())[:limit]
    except Exception:  # noqa: BLE001 - a plugin's exception may fail even to print
        text = "(its message cannot be printed)"
    if isinstance(exc, (HpplugError, PluginError)):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def summary_fields(exc: BaseException) -> dict[str, str]:
    """What a failed run's ``summary.json`` records about the error that ended it."""
    fields = {"error": one_line(exc)}
    if isinstance(exc, PluginError):
        fields.update(error_plugin=exc.plugin, error_hook=exc.hook)
    return fields
