"""A run's local record on disk, read and written as untrusted, interruptible files.

``<output-dir>/<run-id>/`` holds ``config.json``, ``metrics.jsonl``, ``summary.json`` and
``checkpoint/``; ``attempts/<n>/`` keeps earlier attempts of the same run id that ended
before their first checkpoint (a preempted sweep trial re-run from the start).

- JSON files are replaced atomically (``hpplug.atomic``: temporary file, fsync, rename):
  a kill or a full disk leaves the previous file, never a torn one.
- ``metrics.jsonl`` is appended line by line; a line only counts once its newline is
  written, so a torn last line (a kill or a full disk mid-write) is dropped when read and
  cut off before a resumed run appends.
- Everything read back is checked: damage is an ``HpplugError`` naming the file. An
  empty ``summary.json`` (what a non-atomic write cut short leaves, e.g. by an older
  hpplug) counts as no summary: the checkpoint then decides whether the run can resume.
- Run ids come from outside (``WANDB_RUN_ID``, a folder name) and become folder names:
  only plain ids are accepted.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import string
from pathlib import Path
from typing import Any

from hpplug.atomic import write_atomic
from hpplug.errors import HpplugError

CONFIG, METRICS, SUMMARY, ATTEMPTS = "config.json", "metrics.jsonl", "summary.json", "attempts"
# W&B's generated ids are 8 lowercase letters and digits; people and tools also use
# letters, digits, '-' and '_'. Nothing that a path could read as a separator, '.' or '..'.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_RESERVED = {"wandb"}  # the offline W&B runs beside the records


def _show(value: str, limit: int = 40) -> str:
    """A value quoted for a one-line message: control characters escaped, long ones cut."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def new_run_id() -> str:
    """Eight lowercase letters and digits, the shape of a W&B run id."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def is_run_id(value: str) -> bool:
    return bool(_RUN_ID.fullmatch(value)) and value.lower() not in _RESERVED


def check_run_id(value: str, source: str) -> str:
    """``value`` if it is a plain run id, else an ``HpplugError`` saying what ``source`` held."""
    if not is_run_id(value):
        raise HpplugError(f"{source} {_show(value)} is not a run id: use 1 to 64 letters, digits, '-' or '_' "
                          f"starting with a letter or digit (not {' or '.join(sorted(_RESERVED))}), "
                          "like W&B's own 8-character ids")
    return value


def env_run_id() -> str | None:
    """``WANDB_RUN_ID`` (set by ``wandb agent``, or by anyone), checked; None when unset."""
    value = os.environ.get("WANDB_RUN_ID")
    if value is None:
        return None
    if value == "":
        raise HpplugError("WANDB_RUN_ID is set but empty: unset it for a new run id, or set a run id")
    return check_run_id(value, "WANDB_RUN_ID")


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` atomically; on any failure the old file stays as it was."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def _damaged(path: Path, why: str, fix: str) -> HpplugError:
    return HpplugError(f"{path} is damaged ({why}); {fix}")


def read_json(path: Path, fix: str = "", empty_ok: bool = False, *, tolerant: bool = False) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when missing (or empty, with ``empty_ok``: what a
    non-atomic write cut short leaves). Other damage names the file and ``fix``; with
    ``tolerant`` (a reader that must go on, such as a sweep watching its trials) it is None."""
    try:
        return _read_json(path, fix, empty_ok)
    except HpplugError:
        if tolerant:
            return None
        raise


def _read_json(path: Path, fix: str, empty_ok: bool) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HpplugError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from None
    if not raw.strip():
        if empty_ok:
            return None
        raise _damaged(path, "empty", fix)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _damaged(path, f"not JSON: {str(exc)[:80]}", fix) from None
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON {type(data).__name__}, not an object", fix)
    return data


def read_jsonl(path: Path, fix: str = "", *, tolerant: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``metrics.jsonl`` and the length in bytes of its complete lines.

    A last line without its newline is a torn write and is left out; any other line that
    is not a JSON object with an integer ``step`` is damage, named with its line number.
    With ``tolerant`` (a reader that reads around damage: a sweep), a file that cannot be
    read has no rows and a line that is not a JSON object is skipped.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        if tolerant:
            return [], 0
        raise HpplugError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from None
    end = raw.rfind(b"\n") + 1  # bytes after the last newline: a torn tail
    rows = []
    for number, line in enumerate(raw[:end].split(b"\n")[:-1], start=1):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if isinstance(row, dict) and (tolerant or type(row.get("step")) is int):
            rows.append(row)
        elif not tolerant:
            raise _damaged(path, f"line {number} is not a metrics row", fix)
    return rows, end


def cut_torn_tail(path: Path, length: int) -> None:
    """Drop a torn last line so that appending makes valid JSONL again."""
    if path.is_file() and path.stat().st_size > length:
        os.truncate(path, length)


def _is_record_file(name: str) -> bool:
    """A file or folder hpplug writes in a record (a checkpoint's staging copies and the
    temporary files of an atomic write included); anything else there is someone else's."""
    from hpplug.checkpoint_files import CHECKPOINT

    return name in (CONFIG, METRICS, SUMMARY) or name.startswith((CHECKPOINT, f".{CONFIG}.", f".{SUMMARY}."))


def keep_aside(record_dir: Path) -> Path | None:
    """Move an earlier attempt's files into ``attempts/<n>/``: a clean start under the
    same run id neither mixes its rows with theirs nor loses them. Returns that folder."""
    mine = [p for p in record_dir.iterdir() if _is_record_file(p.name)]
    if not mine:
        return None
    attempts = record_dir / ATTEMPTS
    attempts.mkdir(exist_ok=True)
    n = 1 + max((int(p.name) for p in attempts.iterdir() if p.name.isdigit()), default=0)
    target = attempts / str(n)
    target.mkdir()
    for path in mine:
        path.rename(target / path.name)
    return target


ENDED = ("finished", "stopped")  # statuses of runs that are over: never resumed, never restarted


def status(record_dir: Path) -> str | None:
    """The status in a run's summary.json; None while it runs or after a kill (no summary,
    or an empty one that a write cut short left: the checkpoint then decides)."""
    summary = read_json(record_dir / SUMMARY, "restore or move it aside, then try again", empty_ok=True)
    return None if summary is None else summary.get("status")


def classify(record_dir: Path) -> str | None:
    """What a run id's folder holds: None (nothing yet), ``"finished"`` (ended for good: its
    status is finished, or stopped early by a plugin or a sweep), ``"resumable"`` (a checkpoint,
    not ended) or ``"restartable"`` (an attempt that ended before its
    first checkpoint). A folder that is not a run record, or damage, is an ``HpplugError``."""
    from hpplug import checkpoint_files as checkpoint

    if record_dir.is_symlink() or (record_dir.exists() and not record_dir.is_dir()):
        raise HpplugError(f"{record_dir} is not a run record folder (a link or a file is there); "
                          "use another run id or --output-dir")
    names = {p.name for p in record_dir.iterdir()} - {ATTEMPTS} if record_dir.is_dir() else set()
    if not names:
        return None
    if not any(_is_record_file(name) for name in names):
        raise HpplugError(f"{record_dir} is not a run record (no {CONFIG}, {METRICS} or {checkpoint.CHECKPOINT}/); "
                          "use another run id or --output-dir")
    if status(record_dir) in ENDED:
        return "finished"
    if not checkpoint.has_checkpoint(record_dir):
        return "restartable"
    checkpoint.saved_config(record_dir)  # every file verified: damage is one line, never a resume
    read_json(record_dir / CONFIG, "restore or move it aside, then try again")
    read_jsonl(record_dir / METRICS, "remove or repair that line, then try again")
    return "resumable"


def resumable(path: Path) -> bool:
    """Whether the record at ``path`` (a run id's folder) resumes from its checkpoint; a
    finished, foreign or locked one is refused (``check_new``), an empty or absent one is
    new. How ``hpplug run`` and a sweep's pack read a run id they are given."""
    state = classify(path)
    if state != "resumable":
        check_new(path, state)
    return state == "resumable"


def check_new(record_dir: Path, state: str | None) -> None:
    """Refuse to start a new run where a finished or resumable one already is."""
    if state == "finished":
        raise HpplugError(f"run {record_dir.name} already ended ({status(record_dir)}; record {record_dir}); use another run id "
                          "(unset WANDB_RUN_ID for a new one)")
    if state == "resumable":
        raise HpplugError(f"run {record_dir.name} already has a record with a checkpoint ({record_dir}); "
                          f"continue it with: hpplug run --resume {record_dir}, or use another run id")
