"""Runs the real ``hpplug`` command line with two test plugins registered in-process.

Used by the tests as ``python tests/driver.py run ...`` and under torchrun, so that a test
can SIGKILL a run at an exact update or record what each rank trained on.

- ``killer``: with env ``HPPLUG_TEST_KILL_AT=N``, SIGKILLs its own process after update N.
- ``recorder``: with env ``HPPLUG_TEST_RECORD=DIR``, appends one JSON line per update to
  ``DIR/rank<r>.jsonl``: the update, the LR and the data set indices this rank trained on.
"""

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


if __name__ == "__main__":
    discovery.register_local("killer", Killer)
    discovery.register_local("recorder", Recorder)
    main(sys.argv[1:])
