"""Runs the real ``hpplug`` command line with two test plugins registered in-process.

Used by the tests as ``python tests/driver.py run ...`` and under torchrun, so that a test
can SIGKILL a run at an exact update or record what each rank trained on.

- ``killer``: with env ``HPPLUG_TEST_KILL_AT=N``, SIGKILLs its own process after update N.
- ``recorder``: with env ``HPPLUG_TEST_RECORD=DIR``, appends one JSON line per update to
  ``DIR/rank<r>.jsonl``: the update, the LR and the data set indices this rank trained on.
- a full disk: see ``full_disk`` below (``HPPLUG_TEST_ENOSPC_DIR``).
"""

import errno
import json
import os
import signal
import sys
from pathlib import Path

from hpplug import Plugin, discovery, hookimpl
from hpplug.cli import main


class Killer(Plugin):
    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        if progress.update == int(os.environ.get("HPPLUG_TEST_KILL_AT", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)


class Recorder(Plugin):
    def __init__(self, **values):
        super().__init__(**values)
        self.indices: list[int] = []

    @hookimpl
    def hpplug_transform_batch(self, batch, progress):
        if batch.train:
            self.indices += batch.index.tolist()

    @hookimpl
    def hpplug_before_optimizer_step(self, model, progress):
        folder = os.environ.get("HPPLUG_TEST_RECORD")
        if folder:
            import torch.distributed as dist

            rank = dist.get_rank() if dist.is_initialized() else 0
            line = {"update": progress.update, "epoch": progress.epoch, "indices": self.indices}
            with open(Path(folder) / f"rank{rank}.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        self.indices = []


# --- fault injection: a full disk -------------------------------------------------------
# HPPLUG_TEST_ENOSPC_DIR=DIR makes writes to files under DIR fail with ENOSPC, as on a full
# disk: the write that does not fit writes what fits, then fails; later ones write nothing.
#   HPPLUG_TEST_ENOSPC_AFTER=N       the disk holds N more bytes (default 0: full at once);
#   HPPLUG_TEST_ENOSPC_AT_UPDATE=K   or: it fills up at update K (needs --plugin disk-full),
#                                    that write writing half its bytes;
#   HPPLUG_TEST_ENOSPC_NAME=S        only files whose name contains S are affected.
# Python-level writes only (open, Path.write_text, os.fdopen); torch.save and safetensors
# write from C++ and are not affected, nor is W&B's wandb-core process.


class DiskFull(Plugin):
    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        if progress.update == int(os.environ.get("HPPLUG_TEST_ENOSPC_AT_UPDATE", "-1")):
            _DISK["left"], _DISK["half"] = 0, True


_DISK: dict = {"left": None, "half": False}


class _FullDiskFile:
    """A file object whose writes run out of space (text or binary)."""

    def __init__(self, file, path):
        self._file, self._path = file, path

    def write(self, data):
        size = len(data.encode() if isinstance(data, str) else bytes(data))
        left = _DISK["left"]
        if left is None or size <= left:
            if left is not None:
                _DISK["left"] = left - size
            return self._file.write(data)
        fits = size // 2 if _DISK["half"] else left
        if fits:
            self._file.write(data[:fits])  # JSON is ASCII: characters are bytes
            self._file.flush()
        _DISK["left"], _DISK["half"] = 0, False
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def __iter__(self):
        return iter(self._file)


def full_disk(folder: str) -> None:
    import builtins
    import io

    root = os.path.realpath(folder) + os.sep
    real_open = io.open
    name = os.environ.get("HPPLUG_TEST_ENOSPC_NAME", "")
    if "HPPLUG_TEST_ENOSPC_AT_UPDATE" not in os.environ:
        _DISK["left"] = int(os.environ.get("HPPLUG_TEST_ENOSPC_AFTER", "0"))

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if not set(mode) & set("wax+"):
            return f
        path = os.path.realpath(f"/proc/self/fd/{file}" if isinstance(file, int) else file)
        if path.startswith(root) and name in os.path.basename(path):
            return _FullDiskFile(f, path)
        return f

    builtins.open = io.open = open_


if __name__ == "__main__":
    discovery.register_local("killer", Killer)
    discovery.register_local("recorder", Recorder)
    # full disk (see above)
    discovery.register_local("disk-full", DiskFull)
    if os.environ.get("HPPLUG_TEST_ENOSPC_DIR"):
        full_disk(os.environ["HPPLUG_TEST_ENOSPC_DIR"])
    main(sys.argv[1:])
