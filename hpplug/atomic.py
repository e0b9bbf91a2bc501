"""Writing files that survive a kill, a full disk or a power cut at any instant: the one
place hpplug fsyncs and renames.

- :func:`write_atomic` replaces a file so that a reader (or a later run) sees the old or
  the new content, never a torn mix: temporary file beside it, fsync, rename, fsync of the
  folder (so the rename itself survives a power cut). On any failure the old file stays
  and the temporary file is removed.
- :func:`write_durable` and :func:`fsync_dir` are the two steps for files whose folder is
  the unit of atomicity (a checkpoint being staged): each file is on disk before the
  step that makes the folder count.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

# What fsync of a folder raises on file systems that cannot sync folders: nothing to do.
_NO_FOLDER_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def write_durable(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it, so that what is written after it cannot outlive it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder: str | Path) -> None:
    """Make the names created, renamed or removed in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders (Windows): the rename is enough
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_SYNC:
            raise
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically and durably.

    The temporary file is ``.<name>.<pid>-<random>.tmp`` beside ``path``: unique to this
    write, and named so that what a kill leaves behind says whose it is.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write_durable(tmp, data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
