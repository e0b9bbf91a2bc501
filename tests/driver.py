"""Runs the real ``hpplug`` command line with test plugins registered in-process.

Used by the tests as ``python tests/driver.py run ...`` and under torchrun, so that a test
can SIGKILL a run at an exact update or record what each rank trained on.

- ``killer``: with env ``HPPLUG_TEST_KILL_AT=N``, SIGKILLs its own process after update N.
- ``recorder``: with env ``HPPLUG_TEST_RECORD=DIR``, appends one JSON line per update to
  ``DIR/rank<r>.jsonl``: the update, the LR and the data set indices this rank trained on.
- a full disk: see ``full_disk`` below (``HPPLUG_TEST_ENOSPC_DIR``).
- ``tally``: keeps state (a count of updates and a tensor) that must survive a resume, and
  logs it at every epoch's end.

In-process tests import from here: ``Killer`` (with :func:`forked`, a real SIGKILL of a
forked copy of the test process, without paying a fresh interpreter per run), and
``CrashAt``, which raises :class:`Crash` from inside the loop instead.

Fault injection: with env ``HPPLUG_TEST_FAULT=ACTION:K:N``, the filesystem calls that the
checkpoint save at update K makes are counted and the Nth one fails. ``kill`` counts every
call that changes the disk (open for writing, fsync, mkdir, rename, replace, rmtree and the
first removal inside it, unlink, rmdir) and SIGKILLs the process before the Nth happens;
``enospc`` counts the files opened for writing and fails the Nth with "No space left on
device", the file created empty, as a full disk leaves it.

``python tests/driver.py faults ACTION K OUT RUN-ARGS...`` runs, in processes forked from
one that has imported everything once (a fresh interpreter per case would take seconds):
a baseline run into ``OUT/baseline``, then for N = 1, 2, ... a run with fault ``ACTION:K:N``
into ``OUT/N`` followed by ``hpplug run --resume auto`` there, until a run meets no Nth
call. ``OUT/faults.json`` lists each case: how the faulty run ended, the checkpoint folders
it left (each with the update of its manifest, or None) and the resume's exit code; each
process's output is in ``OUT/<case>.<stage>.out`` and ``.err``.

``python tests/driver.py every OUT NAME... -- RUN-ARGS...`` runs ``hpplug run RUN-ARGS`` once
per named plugin (``--model``/``--dataset`` for those kinds), into ``OUT/<name>``, all in one
launch: under torchrun each run is its own ``engine.run`` on the same processes. Each rank
writes ``OUT/exits.<rank>.json``: name -> exit code.
"""

import builtins
import errno
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

from hpplug import Plugin, discovery, hookimpl
from hpplug.cli import main


# Installed plugins the cross-cutting tests (resume, two processes, bf16) leave to their own
# packages' tests: data sets that need files, and the model zoos (minutes on this CPU).
NEEDS_FILES = frozenset({"mnist", "fashion-mnist", "cifar10", "imagefolder"})
ELSEWHERE = NEEDS_FILES | {"torchvision", "timm"}


def cross_cutting() -> list[str]:
    """The installed plugins (models and data sets included) every cross-cutting test trains."""
    return sorted(name for name, entry in discovery.discover().items()
                  if entry.cls is not None and entry.distribution != discovery.LOCAL_DISTRIBUTION
                  and name not in ELSEWHERE)


def resume(record: Path, reorder: bool = False):
    """Resume ``record`` in this process as ``hpplug run --resume RECORD`` does (``reorder``:
    its plugins named in reverse order); the run's result."""
    from hpplug import engine
    from hpplug.run_args import resumed_config

    config, entries = resumed_config(discovery.discover(), Path(record))
    if reorder:
        config.plugins.reverse()
        entries.reverse()
    return engine.run(config, entries, resume_dir=Path(record), show_progress=False)


class Killer(Plugin):
    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        if progress.update == int(os.environ.get("HPPLUG_TEST_KILL_AT", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)


class Crash(BaseException):
    """Stands for the process dying: raised from inside the loop, caught by the test."""


class CrashAt(Plugin):
    """Raises :class:`Crash` after update ``CrashAt.at`` (a class attribute the test sets)."""

    at = -1

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        if progress.update == CrashAt.at:
            raise Crash()


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


class Tally(Plugin):
    """State of its own: updates seen, and a running sum of the first layer's weights."""

    def __init__(self, **values):
        super().__init__(**values)
        self.seen, self.total = 0, None

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        weight = next(model.parameters()).detach()
        self.seen += 1
        self.total = weight.clone() if self.total is None else self.total + weight

    @hookimpl
    def hpplug_epoch_end(self, metrics, progress):
        return {"tally/seen": self.seen, "tally/total": float(self.total.double().sum())}

    def state_dict(self):
        return {"seen": self.seen, "total": self.total}

    def load_state_dict(self, state):
        self.seen, self.total = state["seen"], state["total"]


def inject_faults(spec: str) -> None:
    """Make the Nth filesystem call of the checkpoint save at update K fail (see above)."""
    from hpplug import loop

    action, at_update, nth = spec.split(":")
    at_update, nth = int(at_update), int(nth)
    calls = {"active": False, "count": 0, "rmtree": 0}
    save = loop.Loop.save_checkpoint

    def save_checkpoint(self):
        calls["active"] = self.progress.update == at_update
        try:
            return save(self)
        finally:
            calls["active"] = False

    def wrap(owner, name, writes=lambda *args, **kwargs: True):
        original = getattr(owner, name)

        def call(*args, **kwargs):
            # Within rmtree only the first removal counts: it leaves a folder partly deleted.
            counts = (calls["active"] and writes(*args, **kwargs) and calls["rmtree"] in (0, 1)
                      and (action == "kill" or name == "open"))
            if counts:
                calls["count"] += 1
                calls["rmtree"] += calls["rmtree"] == 1 and name != "rmtree"
                if calls["count"] == nth:
                    if action == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    if name == "open":
                        original(*args, **kwargs).close()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]) if args else None)
            if name != "rmtree":
                return original(*args, **kwargs)
            calls["rmtree"] = 1
            try:
                return original(*args, **kwargs)
            finally:
                calls["rmtree"] = 0

        setattr(owner, name, call)

    loop.Loop.save_checkpoint = save_checkpoint
    wrap(builtins, "open", lambda file, mode="r", *args, **kwargs: any(c in mode for c in "wax+"))
    for name in ("fsync", "mkdir", "rename", "replace", "unlink", "rmdir"):
        wrap(os, name)
    wrap(shutil, "rmtree")


def forked(function, log: Path) -> int:
    """Call ``function()`` in a forked copy of this process, its output in ``LOG.out`` and
    ``LOG.err``; returns the child's exit code (1 if it raised), or -signal if it was killed.

    The child trains on one thread: OpenMP's thread pool does not survive a fork, and a
    child that uses it hangs. Runs that must match the child's bit for bit use one too.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd, suffix in ((1, ".out"), (2, ".err")):
                os.dup2(os.open(f"{log}{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            torch.set_num_threads(1)
            function()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - the child reports whatever ended it, then exits
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def in_child(argv: list[str], log: Path, fault: str | None = None) -> int:
    """Run ``hpplug ARGV`` in a forked process; its exit code, or -signal if killed."""
    def run() -> None:
        if fault:
            inject_faults(fault)
        main(argv)

    return forked(run, log)


def faults(action: str, at_update: str, out: str, run_args: list[str]) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:  # here, not forked: it imports what the children then find imported
        main(["run", *run_args, "--output-dir", str(out_dir / "baseline")])
    except SystemExit as exc:
        assert not exc.code, f"the baseline run failed: {exc.code}"
    cases = []
    for n in range(1, 1000):
        ended = in_child(["run", *run_args, "--output-dir", str(out_dir / str(n))], out_dir / f"{n}.run",
                         fault=f"{action}:{at_update}:{n}")
        if ended == 0:  # the save has fewer than n calls: every one was tried
            shutil.rmtree(out_dir / str(n))
            break
        left = {p.name: json.loads((p / "manifest.json").read_text())["update"] if (p / "manifest.json").exists()
                else None for p in (out_dir / str(n)).glob("*/checkpoint*")}
        resumed = in_child(["run", "--resume", "auto", "--output-dir", str(out_dir / str(n))],
                           out_dir / f"{n}.resume")
        cases.append({"case": n, "ended": ended, "left": left, "resumed": resumed})
    (out_dir / "faults.json").write_text(json.dumps(cases, indent=1))


def every(out: str, names: list[str], run_args: list[str]) -> None:
    """``hpplug run`` once per plugin in ``names``, in this process (see the module's doc)."""
    import torch.distributed as dist

    from hpplug import engine

    # engine.run takes the process group down at its end; setting a new one up on the same
    # rendezvous can pair the processes' runs wrongly and hang. Keep one for every run.
    engine._close_processes = lambda accelerator: accelerator.wait_for_everyone()
    catalog = discovery.discover()
    out_dir, exits = Path(out), {}
    for name in names:
        option = {"model": "--model", "dataset": "--dataset"}.get(catalog[name].kind_name, "--plugin")
        try:
            main(["run", option, name, *run_args, "--output-dir", str(out_dir / name)])
            exits[name] = 0
        except SystemExit as exc:
            exits[name] = exc.code if isinstance(exc.code, int) else 1
    rank = os.environ.get("RANK", "0")
    (out_dir / f"exits.{rank}.json").write_text(json.dumps(exits))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    discovery.register_local("killer", Killer)
    discovery.register_local("recorder", Recorder)
    discovery.register_local("disk-full", DiskFull)
    discovery.register_local("tally", Tally)
    if os.environ.get("HPPLUG_TEST_ENOSPC_DIR"):
        full_disk(os.environ["HPPLUG_TEST_ENOSPC_DIR"])
    if os.environ.get("HPPLUG_TEST_FAULT"):
        inject_faults(os.environ["HPPLUG_TEST_FAULT"])
    if sys.argv[1:2] == ["faults"]:
        torch.set_num_threads(1)  # no thread pool for the forked children to inherit
        faults(*sys.argv[2:5], sys.argv[5:])
    elif sys.argv[1:2] == ["every"]:
        split = sys.argv.index("--")
        every(sys.argv[2], sys.argv[3:split], sys.argv[split + 1:])
    else:
        main(sys.argv[1:])
