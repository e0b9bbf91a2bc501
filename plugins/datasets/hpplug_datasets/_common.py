"""What the data sets share: the offline switch and the parts of their one-line errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpplug import HpplugError

OFFLINE_ENV = "HPPLUG_OFFLINE"


def downloads_on(download: bool) -> bool:
    """``download`` unless ``HPPLUG_OFFLINE`` is set (to anything but ``0``)."""
    return download and os.environ.get(OFFLINE_ENV, "").strip() in ("", "0")


def detail(exc: BaseException) -> str:
    """``Type: message`` on one line, without torchvision's C++ source location, at most ~300 characters."""
    text = shown(" ".join(part.strip() for part in str(exc).splitlines() if part.strip()))
    text = re.sub(r"^.*?\.(?:cpp|h):\d+,\s*", "", text)
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text or 'no detail'}"


def shown(path: object) -> str:
    """A path for a one-line message: control characters (a newline in a folder name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def not_there(name: str, folder: Path, why: str, files: str, where: Path, downloading: bool) -> HpplugError:
    """The error for a data set that is missing and could not be fetched: where to put what."""
    state = "downloading failed" if downloading else "downloads are off"
    return HpplugError(f"{name} is not in {shown(folder)} and {state} ({why}); put {files} in {shown(where)}, "
                       "or run once with network access")
