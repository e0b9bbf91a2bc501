"""The one exception type the CLI turns into a one-line message and exit code 2."""


class HpplugError(Exception):
    """Bad input or environment: the message says what was wrong and what would be right."""
