"""A checkpoint as it lies on disk: its folders, its manifest, and reading it back with
every file checked against the manifest. No torch here (the tensors are decoded only when
a state is read), so a sweep runner can tell which trials resume without importing it.
Writing and loading a run's checkpoint is :mod:`hpplug.checkpoint`, which describes the format.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpplug import record
from hpplug.errors import HpplugError

CHECKPOINT = "checkpoint"
STAGING, PREVIOUS = CHECKPOINT + ".tmp", CHECKPOINT + ".old"
MANIFEST, RUN = "manifest.json", "run.json"
FORMAT = "hpplug-checkpoint/1"
STATE_SUFFIXES = (".json", ".safetensors")  # a state's two files (hpplug.statefile.SUFFIXES)
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def has_checkpoint(record_dir: Path) -> bool:
    """Whether ``record_dir`` holds a checkpoint to resume (or a damaged one to report):
    ``checkpoint/``, or a complete folder that a save killed between two renames left."""
    return (record_dir / CHECKPOINT).is_dir() or any(
        (record_dir / name / MANIFEST).exists() for name in (STAGING, PREVIOUS))


def saved_config(record_dir: Path) -> dict[str, Any]:
    """The configuration of the checkpoint ``--resume`` would load, every file verified
    first, so that a damaged checkpoint is refused before the record is touched."""
    saved = latest(record_dir)
    saved.verify()
    try:
        config = json.loads(saved.read(RUN))["config"]
        from hpplug import runstate  # imports torch: only to resume

        problem = runstate.config_problem(config)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        problem = f"is damaged: {exc}"
    named = config.get("plugins", []) if problem is None else []
    # The manifest keys every plugin's state: the --plugin ones, then the model's and the data set's.
    if problem is None and (not set(named) <= set(saved.manifest["plugins"])
                            or len(saved.manifest["plugins"]) != len(set(named)) + 2):
        problem = "names other plugins than manifest.json"
    if problem:
        raise saved.refuse(RUN, problem)
    return config


def find_resumable(output_dir: Path) -> Path:
    """``--resume auto``: the newest run under ``output_dir`` with a checkpoint that did not
    finish. A damaged candidate is reported, not skipped: skipping would pick an older run."""
    folders = [p for p in output_dir.iterdir() if record.is_run_id(p.name)] if output_dir.is_dir() else []
    candidates = [p for p in folders if has_checkpoint(p) and record.classify(p) == "resumable"]
    if not candidates:
        raise HpplugError(f"no unfinished run with a checkpoint in {output_dir}; "
                          "pass --resume DIR with a run's record folder")
    return max(candidates, key=lambda p: max((p / n).stat().st_mtime for n in (CHECKPOINT, STAGING, PREVIOUS)
                                             if (p / n).exists()))


@dataclass
class Saved:
    """A complete checkpoint folder and its manifest; each file is checked against the
    manifest as it is read."""

    folder: Path
    manifest: dict[str, Any]

    def refuse(self, filename: str, problem: str) -> HpplugError:
        return HpplugError(f"checkpoint {self.folder} cannot be resumed: {_part(filename)} ({filename}) "
                           f"{problem}; restore it from a copy or start the run again")

    def read(self, filename: str) -> bytes:
        entry = self.manifest["files"].get(filename)
        if entry is None:
            raise self.refuse(filename, "is not listed in manifest.json")
        path = self.folder / filename
        try:
            info = path.stat()
            # Size first: a crafted entry (a link to /dev/zero, a huge file) is never read.
            data = path.read_bytes() if stat.S_ISREG(info.st_mode) and info.st_size == entry["bytes"] else b""
        except FileNotFoundError:
            raise self.refuse(filename, "is missing") from None
        except OSError as exc:
            raise self.refuse(filename, f"cannot be read ({exc.strerror})") from None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise self.refuse(filename, "is damaged: its size or sha256 differs from manifest.json")
        return data

    def state(self, name: str) -> Any:
        """The state saved as ``name.json`` + ``name.safetensors``."""
        from hpplug import statefile  # imports torch: only to load

        try:
            return statefile.decode(*(self.read(name + suffix) for suffix in statefile.SUFFIXES))
        except statefile.StateFileError as exc:
            raise self.refuse(name + ".*", f"is damaged: {exc}") from None

    def verify(self) -> None:
        for filename in self.manifest["files"]:
            self.read(filename)


def _part(filename: str) -> str:
    """What a checkpoint file holds, in words."""
    stem = filename.split(".*")[0].removesuffix(".json").removesuffix(".safetensors")
    kind, _, rest = stem.partition(".")
    if kind == "rng" and rest:
        return f"the RNG state of process {rest}"
    if kind == "plugin" and rest:
        return f"the state of plugin {rest}"
    return {"model": "the model state", "optimizer": "the optimizer state", "loop": "the loop state",
            "scaler": "the gradient scaler state", "run": "the run configuration",
            "manifest": "the manifest"}.get(stem, "a file")


def state_stem(plugin: str) -> str:
    """A plugin's state files' stem. ``MODULE:ATTR`` (your own model or data set) becomes
    ``MODULE--ATTR``: no ':' in a file name, and plugin names never hold '--'."""
    return "plugin." + plugin.replace(":", "--")


def _parts(processes: int, plugins: list[str]) -> list[str]:
    """The states every checkpoint of a run with these processes and plugins holds."""
    return ["model", "optimizer", "loop", *(f"rng.{r}" for r in range(processes)),
            *(state_stem(name) for name in plugins)]


def _manifest(folder: Path) -> Saved:
    """The folder's manifest, checked for the shape and the files hpplug writes."""
    saved = Saved(folder, {})
    try:
        path = folder / MANIFEST
        if path.stat().st_size > 1 << 20 or not path.is_file():
            raise ValueError("not a small plain file")
        m = json.loads(path.read_bytes())
        ok = (isinstance(m, dict) and m.get("format") == FORMAT and _count(m.get("sequence"))
              and isinstance(m.get("files"), dict) and _count(m.get("processes"))
              and 1 <= m["processes"] <= len(m["files"]) and isinstance(m.get("plugins"), list)
              and all(isinstance(p, str) and _FILE_NAME.match(state_stem(p)) for p in m["plugins"])
              and all(_FILE_NAME.match(k) and isinstance(v, dict) and _count(v.get("bytes"))
                      and isinstance(v.get("sha256"), str) for k, v in m["files"].items()))
    except FileNotFoundError:
        raise saved.refuse(MANIFEST, "is missing: the folder is damaged, or was saved by an older hpplug "
                                     "in Accelerate's pickle format, never loaded (unpickling runs code)") from None
    except (OSError, ValueError, RecursionError):
        ok = False
    if not ok:
        raise saved.refuse(MANIFEST, f"is damaged or not a {FORMAT} manifest")
    saved.manifest = m
    for name in [RUN] + [p + s for p in _parts(m["processes"], m["plugins"]) for s in STATE_SUFFIXES]:
        if name not in m["files"]:
            raise saved.refuse(name, "is not listed in manifest.json")
    return saved


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def latest(record_dir: Path) -> Saved:
    """The newest complete checkpoint among what saves (killed ones too) left in ``record_dir``."""
    found = [_manifest(record_dir / name) for name in (CHECKPOINT, STAGING, PREVIOUS)
             if (record_dir / name / MANIFEST).exists() or (name == CHECKPOINT and (record_dir / name).is_dir())]
    if not found:
        raise HpplugError(f"{record_dir} has no checkpoint to resume from ({record_dir / CHECKPOINT} is missing); "
                          "runs write one with --checkpoint-every, or when interrupted")
    return max(found, key=lambda s: s.manifest["sequence"])  # the first of equals: checkpoint/
