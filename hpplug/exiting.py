"""How the ``hpplug`` process ends after a command that went well: at once."""

from __future__ import annotations

import os
import sys


def exit_now(code: int) -> None:
    """End the process without tearing the interpreter down: freeing every module takes
    ~0.5-1 s with torch loaded (~0.25 s for a sweep runner's scipy and matplotlib) and does
    nothing a finished process needs. What must happen at exit still does: the atexit
    handlers (W&B's teardown, logging's flush) and the standard streams flushed. Returns, for
    an ordinary exit, while another thread that is not a daemon or a child process is alive
    (it would be cut short)."""
    import threading

    multiprocessing = sys.modules.get("multiprocessing")
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()) \
            or (multiprocessing is not None and multiprocessing.active_children()):
        return
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)
