"""Warnings about settings that silently do nothing: ``hpplug.warn(message)``.

A plugin (built-in or third-party) calls :func:`warn` from a hook it implements when a
value it was given cannot have the effect the user meant (a crop padding as large as the
image, a step size no run reaches). The warning is one line, ``Warning: ...`` on stderr,
printed by the main process only and once per run however often it is raised (a check in
a per-batch hook is fine). It goes through tqdm, so it never breaks a progress bar.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

_shown: set[str] = set()


def is_main_process() -> bool:
    """Rank 0 of a launch (``RANK``, set by torchrun and ``accelerate launch``), or a lone process."""
    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


def warn(message: str) -> None:
    """Print ``Warning: <message>`` once per run on the main process's stderr.

    Say what has no effect and what would: ``--crop.padding 4 is at least half the 8x8
    images' side ...; use --crop.padding 1``. The message is folded onto one line.
    """
    text = " ".join(str(message).split())
    if not text or text in _shown:
        return
    _shown.add(text)
    if is_main_process():
        tqdm.write(f"Warning: {text}", file=sys.stderr)


def new_run() -> None:
    """Forget the warnings shown: a new run in the same process (tests, notebooks) shows its own."""
    _shown.clear()
