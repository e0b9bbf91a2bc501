"""Writing a file so that a reader (or a kill at any instant) sees the old or the new
content, never a torn mix: temporary file in the same folder, fsync, rename, fsync of the
folder (so the rename itself survives a power cut)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders (Windows): the rename is enough
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
