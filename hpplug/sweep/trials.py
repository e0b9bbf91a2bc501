"""A sweep's trial processes: starting them, signalling them, knowing whether they live.

A trial is a normal ``hpplug run`` (or a pack of them, ``hpplug.sweep.worker``). Trials run in their own process
group, as under ``wandb agent``, so the sweep decides which signal reaches which process;
each holds a lock file for its whole life, so a later runner knows whether it still runs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from hpplug.errors import HpplugError

try:
    import fcntl
except ImportError:  # Windows: no flock; a trial is then found by its recorded pid only
    fcntl = None  # type: ignore[assignment]


# --- trial processes -----------------------------------------------------------------------


def _is_trainer(argv: list[str]) -> bool:
    """``python [-u ...] -m hpplug ...`` or the ``hpplug`` script: a process that trains
    (not a launcher such as torchrun or accelerate, nor wandb-core)."""
    if not argv or not os.path.basename(argv[0]).startswith("python"):
        return bool(argv) and os.path.basename(argv[0]) == "hpplug"
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-m", "-c"):
        i += 2 if argv[i] in ("-X", "-W") else 1
    if i >= len(argv):
        return False
    if argv[i] == "-m":
        return argv[i + 1:i + 2] == ["hpplug"]
    return os.path.basename(argv[i]) == "hpplug"


def signal_trainers(pid: int, signum: int) -> int:
    """Send ``signum`` to every training process of a trial (all ranks under a launcher;
    the launcher itself would die of SIGUSR1). Returns how many were signalled."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    targets = []
    for proc in procs:
        try:
            if _is_trainer(proc.cmdline()):
                targets.append(proc)
        except psutil.Error:
            continue
    for proc in targets or [root]:
        try:
            proc.send_signal(signum)
        except psutil.Error:
            pass
    return len(targets or [root])


# --- locks: one runner per sweep; whether a trial's process lives, whoever started it ------


def lock_sweep(sweep_dir: Path) -> Any:
    """The open, locked ``sweep.lock`` of a sweep folder (close it to unlock): a second
    runner of the same sweep would start the same trials."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    handle = open(sweep_dir / "sweep.lock", "a+")
    if fcntl is not None:  # Windows: no lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise HpplugError(f"another hpplug sweep is running the sweep in {sweep_dir}; "
                              "wait for it, or run more trials at once with --parallel") from None
    return handle


def start(argv: list[str], env: dict[str, str], log: Path, locks: list[Path]) -> subprocess.Popen:
    """Start a process (one trial, or a pack of them) in its own process group, holding
    every trial's lock file in ``locks`` for as long as it lives.

    The runner takes an exclusive ``flock`` on each lock before the process exists and hands
    the same open files to it (``pass_fds``); a lock is free again only when every process
    holding its file has exited. So at any instant (a runner killed after the fork, before
    it recorded the pid) the lock says whether the trial still runs.
    """
    fds: list[int] = []
    try:
        for lock in locks:
            fds.append(os.open(lock, os.O_RDWR | os.O_CREAT, 0o644))
            if fcntl is not None:
                try:
                    fcntl.flock(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise HpplugError(f"trial {lock.stem} is still running (its lock {lock} is held); "
                                      "run the sweep again to wait for it") from None
        with open(log, "ab") as out:
            out.write(f"# {shlex.join(argv)}\n".encode())
            out.flush()
            return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    pass_fds=tuple(fds) if fcntl is not None else (), **new_group())
    finally:
        for fd in fds:
            os.close(fd)


def alive(lock: Path) -> bool | None:
    """Whether a process of the trial still holds its lock (None: no flock here)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also frees the lock if it was taken just now
    return False


def _holders(lock: Path) -> list[Any]:
    """The processes that have ``lock`` open, oldest first (the trial's first process)."""
    import psutil

    target, found = str(lock.resolve()), []
    for proc in psutil.process_iter():
        try:
            if any(f.path == target for f in proc.open_files()):
                found.append((proc.create_time(), proc))
        except psutil.Error:
            continue
    return [proc for _, proc in sorted(found, key=lambda item: item[0])]


def _same_process(pid: int | None, started: float | None) -> Any:
    """The process ``pid`` if it is the very one started at ``started`` (pids are reused)."""
    import psutil

    if not pid or not started:
        return None
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - started) < 0.01 else None
    except psutil.Error:
        return None


class Adopted:
    """A trial process started by an earlier ``hpplug sweep``, still alive."""

    def __init__(self, lock: Path, proc: Any) -> None:
        self.lock, self.proc, self.returncode = lock, proc, None
        self.pid = proc.pid if proc is not None else None

    def _proc_alive(self) -> bool:
        import psutil

        try:
            return self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def poll(self) -> int | None:
        held = alive(self.lock)
        if self.proc is not None and (held is not False or not self.lock.exists()):
            held = self._proc_alive()  # the trial's own process, not a stray child holding the file
        return None if held else -1

    def send_signal(self, signum: int) -> None:
        import psutil

        try:
            if self.proc is not None:
                self.proc.send_signal(signum)
        except psutil.Error:  # it ended meanwhile
            pass


def adopt(lock: Path, pid: int | None, started: float | None) -> Adopted | None:
    """The trial's live process, started by an earlier runner; None when it has ended (or
    never started). Its pid is found through the lock when it was never recorded; without a
    lock file (a trial started by a runner before locks), by its recorded pid alone."""
    held = alive(lock)
    proc = _same_process(pid, started)
    if proc is None and not held:
        return None
    if held is False and lock.exists():
        return None
    if proc is None:
        found = _holders(lock)
        proc = found[0] if found else None
    return Adopted(lock, proc)


def new_group() -> dict[str, Any]:
    """Start trials in their own process group, as ``wandb agent`` does: a Ctrl-C reaches
    the runner, which forwards it, and SIGUSR1 reaches only the trial that must stop."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}




# --- a trial's command and environment --------------------------------------------------


def command(spec: Any, runs_dir: Path, values: dict[str, Any]) -> list[str]:
    """A trial's argv, built from the YAML and its values (never read from disk): what
    ``wandb agent`` would run, with the sweep's ``--output-dir`` (and ``--project``)."""
    from hpplug.sweep.macros import expand_command

    extra = [f"--output-dir={runs_dir}"]
    if spec.raw.get("project") and "project" not in values:
        extra.append(f"--project={spec.raw['project']}")
    return expand_command(spec.raw["command"], values, extra, spec.raw.get("program"))


PACK_UNSET = ("WANDB_RUN_ID", "WANDB_RUN_GROUP")  # a pack process names each member's own


def environment(wandb_mode: str | None, processes: int, run_id: str | None, group: str | None) -> dict[str, str]:
    """A trial process's environment: its W&B run id and group (as ``wandb agent`` sets
    them; a pack process names each member's itself), never an outer agent's sweep id,
    this Python first on PATH, and its share of the cores when ``processes`` run at once."""
    from hpplug.tracking import resolve_mode

    env = dict(os.environ)
    for key in ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_SERVICE", *PACK_UNSET):
        env.pop(key, None)
    env.update({"WANDB_MODE": resolve_mode(wandb_mode), "PYTHONUNBUFFERED": "1",
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])})
    if run_id is not None:
        env["WANDB_RUN_ID"] = run_id
    if group is not None:
        env["WANDB_RUN_GROUP"] = group
    if processes > 1 and "OMP_NUM_THREADS" not in env:
        # K trials on N cores: N // K threads each, not N each (oversubscription is slow).
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    return env
