"""Tests for hpplug.wandb_file against real offline runs written by wandb-core."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb.proto import wandb_internal_pb2 as pb

from hpplug.wandb_file import BLOCK_SIZE, WandbRun, find_run_files, read_records, read_run

STEPS = list(range(0, 600, 3))  # 200 history rows at non-contiguous steps
BLOB_STEP = 1000
BLOB = "".join(chr(ord("a") + i % 26) for i in range(100_000))  # one record over 3 blocks
CONFIG = {"lr": 1e-3, "model": {"depth": 4, "act": "gelu"}, "tags": ["a", "b"], "seed": 7}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two real offline runs; wandb.init starts wandb-core, so share them across tests."""
    root = tmp_path_factory.mktemp("wandb_runs")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("CONFIG_DIR", "CACHE_DIR", "DATA_DIR", "ARTIFACT_DIR"):
            mp.setenv(f"WANDB_{name}", str(root / name.lower()))
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # any network attempt would fail fast
        mp.delenv("WANDB_API_KEY", raising=False)


        def settings() -> wandb.Settings:  # fresh each time: wandb.init mutates the one it gets
            return wandb.Settings(console="off", x_disable_stats=True, disable_git=True)

        a = wandb.init(mode="offline", dir=root, project="hpplug-a", group="grp", job_type="train",
                       config=CONFIG, settings=settings())
        for s in STEPS:
            a.log({"loss": 1.0 / (s + 1), "acc": s / 600, "nested": {"a": s}}, step=s)
        a.log({"blob": BLOB}, step=BLOB_STEP)
        a.config.update({"extra": "late"})
        a.summary["best_acc"] = 0.99
        a.summary["tmp"] = 1
        del a.summary["tmp"]
        a.finish(exit_code=0)

        b = wandb.init(mode="offline", dir=root, project="hpplug-b", config={"k": 1}, settings=settings())
        b.log({"x": 1}, step=0)
        b.log({"x": 2}, step=5)
        b.finish(exit_code=2)
        wandb.teardown()
    return {"root": root, "a": a.id, "b": b.id}


@pytest.fixture(scope="module")
def run_a(runs: dict[str, Any]) -> WandbRun:
    return read_run(find_run_files(runs["root"])[0])


def test_find_run_files_sorted_by_mtime(runs: dict[str, Any]) -> None:
    files = find_run_files(runs["root"])
    assert [f.name for f in files] == [f"run-{runs['a']}.wandb", f"run-{runs['b']}.wandb"]
    assert all(f.parent.name.startswith("offline-run-") for f in files)


def test_records_complete_and_span_blocks(runs: dict[str, Any]) -> None:
    path = find_run_files(runs["root"])[0]
    records = list(read_records(path))
    assert path.stat().st_size > 4 * BLOCK_SIZE
    assert [r.num for r in records] == list(range(1, len(records) + 1))  # nothing lost
    assert records[0].WhichOneof("record_type") == "header"
    assert max(r.ByteSize() for r in records) > 3 * BLOCK_SIZE  # FIRST + MIDDLE... + LAST
    assert any(r.summary.remove for r in records)  # `del run.summary["tmp"]` is a remove, not a rewrite


def test_run_metadata(runs: dict[str, Any], run_a: WandbRun) -> None:
    assert (run_a.run_id, run_a.project, run_a.group, run_a.job_type) == (runs["a"], "hpplug-a", "grp", "train")
    assert run_a.exit_code == 0 and run_a.resumed is False
    run_b = read_run(find_run_files(runs["root"])[1])
    assert (run_b.run_id, run_b.project, run_b.group, run_b.exit_code) == (runs["b"], "hpplug-b", "", 2)
    assert run_b.config["k"] == 1
    assert [(h["_step"], h["x"]) for h in run_b.history] == [(0, 1), (5, 2)]


def test_config(run_a: WandbRun) -> None:
    assert {k: v for k, v in run_a.config.items() if k != "_wandb"} == {**CONFIG, "extra": "late"}


def test_history(run_a: WandbRun) -> None:
    assert [h["_step"] for h in run_a.history] == [*STEPS, BLOB_STEP]
    for row, s in zip(run_a.history, STEPS):
        assert row["loss"] == pytest.approx(1.0 / (s + 1))
        assert row["acc"] == pytest.approx(s / 600)
        assert row["nested/a"] == s
        assert "_timestamp" in row and "blob" not in row
    assert run_a.history[-1]["blob"] == BLOB


def test_summary(run_a: WandbRun) -> None:
    assert run_a.summary["best_acc"] == 0.99
    assert run_a.summary["loss"] == pytest.approx(1.0 / (STEPS[-1] + 1))
    assert run_a.summary["nested/a"] == STEPS[-1]
    assert run_a.summary["_step"] == BLOB_STEP
    assert "tmp" not in run_a.summary


# --- framing edge cases on hand-built files (leveldb log writer semantics) ---


def _record(num: int, size: int) -> pb.Record:
    """A Record whose serialized size is exactly ``size`` bytes."""
    rec = pb.Record(num=num)
    rec.output_raw.line = "x" * size
    while rec.ByteSize() > size:
        rec.output_raw.line = rec.output_raw.line[:-1]
    assert rec.ByteSize() == size
    return rec


def _write_log(path: Path, records: list[pb.Record]) -> bytes:
    out = bytearray(b":W&B\xe1\xbe\x00")
    for rec in records:
        data, first = rec.SerializeToString(), True
        while first or data:
            room = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if room < 7:
                out += bytes(room)  # zero-pad a block tail too short for a chunk header
                continue
            piece, data = data[: room - 7], data[room - 7 :]
            kind = (1 if not data else 2) if first else (4 if not data else 3)
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + piece), len(piece), kind) + piece
            first = False
    path.write_bytes(bytes(out))
    return bytes(out)


@pytest.mark.parametrize("tail", [0, 3, 6, 7])  # 7 leaves room for an empty FIRST chunk
def test_block_tails(tmp_path: Path, tail: int) -> None:
    records = [_record(1, BLOCK_SIZE - 7 - 7 - tail), _record(2, 70_000), _record(3, 10)]
    raw = _write_log(tmp_path / "run-x.wandb", records)
    if 0 < tail < 7:
        assert raw[BLOCK_SIZE - tail : BLOCK_SIZE] == bytes(tail)
    assert list(read_records(tmp_path / "run-x.wandb")) == records


def test_corrupt_truncated_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    records = [_record(1, 100), _record(2, 40_000)]
    raw = _write_log(path, records)
    path.write_bytes(raw[:-10])  # run still being written: stop before the partial record
    assert list(read_records(path)) == records[:1]
    path.write_bytes(raw[:50] + b"?" + raw[51:])
    with pytest.raises(ValueError, match="checksum"):
        list(read_records(path))
    path.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="header"):
        list(read_records(path))
