"""Read Weights & Biases offline run files (``run-<id>.wandb``) without a server.

wandb 0.31 has no public reader for these files: the Go ``wandb-core`` writes them,
offline runs get no ``config.yaml`` or ``wandb-summary.json``, and the old Python
``DataStore`` is gone. hpplug uses this module to check what W&B really recorded,
so its tests and users can inspect runs made with ``WANDB_MODE=offline``.

File layout (as written by wandb-core 0.31): a 7-byte header ``b":W&B"`` +
magic ``0xBEE1`` (uint16 LE) + version ``0``, then a leveldb-style log of 32 KiB
blocks (the header counts towards block 0). Each chunk has a 7-byte header
(crc32 uint32 LE, length uint16 LE, type uint8: 1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST);
the checksum is plain zlib CRC-32 of type byte + payload (not leveldb's masked
crc32c). A block tail shorter than 7 bytes is zero padding. Reassembled payloads
are ``wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

__all__ = ["WandbRun", "find_run_files", "read_records", "read_run"]

BLOCK_SIZE = 32768
HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def find_run_files(root: str | Path) -> list[Path]:
    """Every ``run-*.wandb`` under ``root`` (recursive), oldest modification first."""
    return sorted(Path(root).rglob("run-*.wandb"), key=lambda p: (p.stat().st_mtime, str(p)))


def _chunks(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(type, payload)`` per chunk; stop quietly at a truncated tail (run still writing)."""
    with open(path, "rb") as f:
        block = f.read(BLOCK_SIZE)
        if len(block) < HEADER.size or HEADER.unpack_from(block) != (b":W&B", 0xBEE1, 0):
            raise ValueError(f"{path}: not a W&B transaction log (header {block[:7]!r})")
        pos = HEADER.size
        while block:
            while pos + CHUNK.size <= len(block):  # a shorter tail is zero padding
                crc, length, kind = CHUNK.unpack_from(block, pos)
                if (crc, length, kind) == (0, 0, 0):  # zeroed rest of block
                    break
                payload = block[pos + CHUNK.size : pos + CHUNK.size + length]
                if len(payload) < length:
                    if len(block) == BLOCK_SIZE:
                        raise ValueError(f"{path}: chunk overruns its block")
                    return
                if zlib.crc32(bytes([kind]) + payload) != crc:
                    raise ValueError(f"{path}: checksum mismatch at offset {f.tell() - len(block) + pos}")
                yield kind, payload
                pos += CHUNK.size + length
            block, pos = f.read(BLOCK_SIZE), 0


def read_records(path: str | Path) -> Iterator[pb.Record]:
    """The raw ``Record`` messages of a ``.wandb`` file, reassembling block-spanning records."""
    parts: list[bytes] | None = None
    for kind, payload in _chunks(Path(path)):
        if kind == FULL and parts is None:
            data = payload
        elif kind == FIRST and parts is None:
            parts = [payload]
            continue
        elif kind in (MIDDLE, LAST) and parts is not None:
            parts.append(payload)
            if kind == MIDDLE:
                continue
            data, parts = b"".join(parts), None
        else:
            raise ValueError(f"{path}: unexpected chunk type {kind}")
        record = pb.Record()
        record.ParseFromString(data)
        yield record


@dataclass
class WandbRun:
    """What one offline run recorded; keys from ``nested_key`` are joined with ``/``.

    ``metrics``: each ``define_metric``, by name (or pattern, ``train/*``): its
    ``step_metric`` and its ``summary`` (``["max"]``, ...)."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    entity: str = ""
    name: str = ""
    notes: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    resumed: bool = False
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def _key(item: pb.ConfigItem | pb.SummaryItem | pb.HistoryItem) -> str:
    return item.key or "/".join(item.nested_key)


def _merge(target: dict[str, Any], rec: pb.ConfigRecord | pb.SummaryRecord) -> None:
    # value_json is always written (wandb 0.31 refuses typed-only history encoding).
    target.update((_key(i), json.loads(i.value_json)) for i in rec.update)
    for item in rec.remove:
        target.pop(_key(item), None)


def read_run(path: str | Path, wait: float = 0.0) -> WandbRun:
    """Replay a ``.wandb`` file into config, history, summary and exit status.

    W&B's service may still be writing the file when the run's process has returned from
    ``finish()``; ``wait`` seconds are spent waiting for its exit record.
    """
    deadline = time.monotonic() + wait
    run = _replay(path)
    while run.exit_code is None and time.monotonic() < deadline:
        time.sleep(0.1)
        run = _replay(path)
    return run


def _replay(path: str | Path) -> WandbRun:
    run = WandbRun()
    for rec in read_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.project, run.group, run.job_type = r.run_id, r.project, r.run_group, r.job_type
            run.entity, run.name, run.notes, run.tags = r.entity, r.display_name, r.notes, list(r.tags)
            run.resumed = r.resumed
            _merge(run.config, r.config)
            _merge(run.summary, r.summary)
        elif kind == "config":
            _merge(run.config, rec.config)
        elif kind == "summary":
            _merge(run.summary, rec.summary)
        elif kind == "history":
            row = {_key(i): json.loads(i.value_json) for i in rec.history.item}
            row.setdefault("_step", rec.history.step.num)
            run.history.append(row)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
        elif kind == "metric":
            m = rec.metric
            run.metrics[m.name or m.glob_name] = {
                "step_metric": m.step_metric, "summary": sorted(f.name for f, on in m.summary.ListFields() if on)}
    return run
