"""Hostile checkpoints: a crafted, damaged or half-written checkpoint is refused in one line
or ignored, never unpickled; a save killed at any instant, or failing on a full disk,
still ends, once resumed, exactly like a run never stopped."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpplug import Plugin, discovery, hookimpl, statefile

from ..driver import Crash, CrashAt
from .conftest import assert_same_run

DRIVER = str(Path(__file__).parents[1] / "driver.py")
ACCELERATE_FILES = ["random_states_0.pkl", "random_states_1.pkl", "custom_checkpoint_0.pkl",
                    "custom_checkpoint_1.pkl", "custom_checkpoint_2.pkl", "optimizer.bin", "pytorch_model.bin",
                    "scheduler.bin", "scaler.pt", "sampler.bin", "dl_state_dict.bin"]
STATES = ["model", "optimizer", "loop", "rng.0", "plugin.crash-at", "plugin.keeper", "plugin.mlp", "plugin.digits"]
FILES = ["manifest.json", "run.json"] + [f"{s}{x}" for s in STATES for x in (".json", ".safetensors")]
WORDS = {"manifest": "the manifest", "run": "the run configuration", "model": "the model state",
         "optimizer": "the optimizer state", "loop": "the loop state", "rng.0": "the RNG state of process 0",
         "plugin.crash-at": "the state of plugin crash-at", "plugin.keeper": "the state of plugin keeper",
         "plugin.mlp": "the state of plugin mlp", "plugin.digits": "the state of plugin digits"}


class Payload:
    """Unpickling it creates the file ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class Keeper(Plugin):
    """State with a tensor in it, as an EMA of the weights would have."""

    def __init__(self, **values):
        super().__init__(**values)
        self.ema = None

    @hookimpl
    def hpplug_after_optimizer_step(self, model, progress):
        weight = next(model.parameters()).detach()
        self.ema = weight.clone() if self.ema is None else 0.9 * self.ema + 0.1 * weight

    def state_dict(self):
        return {"ema": self.ema}

    def load_state_dict(self, state):
        self.ema = state["ema"]


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A record whose run crashed at update 5 of 6, with its checkpoint of update 4."""
    from hpplug import engine
    from hpplug.run_args import build_config

    root = tmp_path_factory.mktemp("crashed")
    core = {"epochs": 1, "batch_size": 256, "checkpoint_every": "2", "wandb_mode": "disabled",
            "output_dir": str(root)}
    discovery.register_local("crash-at", CrashAt)
    discovery.register_local("keeper", Keeper)
    try:
        config, entries = build_config(discovery.discover(), ["crash-at", "keeper"], {"mlp": {"hidden": 8}}, core)
        CrashAt.at = 5
        with pytest.raises(Crash):
            engine.run(config, entries, show_progress=False)
    finally:
        CrashAt.at = -1
        discovery.unregister_local("crash-at")
        discovery.unregister_local("keeper")
    (record,) = root.iterdir()
    return record


@pytest.fixture
def record(crashed: Path, sandbox) -> Path:
    """A copy of ``crashed`` in the sandbox."""
    copy = sandbox.runs / crashed.name
    shutil.copytree(crashed, copy)
    return copy


def resume_refused(refused, sandbox, record: Path) -> str:
    """``hpplug run --resume RECORD`` refused; the record, as the case left it, untouched."""
    sandbox.__post_init__()  # snapshot again: the record as it is now must stay so
    return refused("run", "--resume", str(record)).line


@pytest.fixture
def payload(tmp_path: Path, sandbox) -> tuple[bytes, Path]:
    """The bytes of a crafted pickle (as torch.save writes it) and the file it would create."""
    marker = tmp_path / "pwned"
    probe = tmp_path / "probe.pt"
    torch.save(Payload(tmp_path / "probe-ran"), probe)
    torch.load(probe, weights_only=False)  # the payload is live: loading it runs code
    assert (tmp_path / "probe-ran").exists()
    torch.save(Payload(marker), probe)
    data = probe.read_bytes()
    probe.unlink()
    (tmp_path / "probe-ran").unlink()
    return data, marker


def reseal(folder: Path) -> None:
    """Recompute the manifest as a forger would, so that only the content check remains."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for name in manifest["files"]:
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    path.write_text(json.dumps(manifest))


def test_a_state_file_reads_back_exactly_what_was_written(tmp_path):
    weight = torch.arange(6.0).reshape(2, 3)
    state = {"state": {0: {"step": torch.tensor(3.0), "buf": weight}, 1: {"buf": weight[0], "none": None}},
             "groups": [{"betas": (0.9, 0.999), "lr": float("nan"), "names": ["a"]}], "$marker-like": {"$x": 1},
             "half": torch.ones(2, dtype=torch.bfloat16), "empty": {}, "flag": True}
    statefile.write(tmp_path, "s", state)
    back = statefile.read(tmp_path, "s")
    assert back.keys() == state.keys() and back["state"].keys() == {0, 1}
    assert torch.equal(back["state"][0]["buf"], weight) and torch.equal(back["state"][1]["buf"], weight[0])
    assert back["state"][0]["step"].shape == () and back["state"][1]["none"] is None
    assert back["groups"][0]["betas"] == (0.9, 0.999) and back["groups"][0]["names"] == ["a"]
    assert back["$marker-like"] == {"$x": 1} and back["half"].dtype == torch.bfloat16 and back["flag"] is True
    with pytest.raises(TypeError, match="groups/0/fn is a function"):
        statefile.encode({"groups": [{"fn": lambda: 0}]})
    for doc in ('{"$tensor": "missing"}', '{"$eval": "x"}', '{"$int-keys": {"a": 1}}'):
        with pytest.raises(statefile.StateFileError):
            statefile.decode(doc.encode(), statefile.encode({})[1])
    with pytest.raises(statefile.StateFileError, match="does not name"):
        statefile.decode(b"{}", statefile.encode({"t": torch.zeros(1)})[1])


def test_the_checkpoint_holds_the_files_these_tests_cover(crashed):
    assert sorted(p.name for p in (crashed / "checkpoint").iterdir()) == sorted(FILES)
    assert not (crashed / "checkpoint.tmp").exists() and not (crashed / "checkpoint.old").exists()
    manifest = json.loads((crashed / "checkpoint" / "manifest.json").read_text())
    assert manifest["update"] == 4 and manifest["plugins"] == ["crash-at", "keeper", "mlp", "digits"]


@pytest.mark.parametrize("name", FILES)
def test_a_crafted_pickle_in_place_of_any_file_is_refused_and_never_loaded(name, record, payload, refused, sandbox):
    data, marker = payload
    (record / "checkpoint" / name).write_bytes(data)
    line = resume_refused(refused, sandbox, record)
    stem = name.removesuffix(".json").removesuffix(".safetensors")
    assert WORDS[stem] in line and str(record / "checkpoint") in line, line
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["missing", "damaged"])
@pytest.mark.parametrize("name", FILES)
def test_a_missing_or_damaged_part_is_refused_naming_it(name, damage, record, refused, sandbox):
    path = record / "checkpoint" / name
    data = bytearray(path.read_bytes())
    if damage == "missing":
        path.unlink()
    elif name == "manifest.json":
        path.write_bytes(bytes(data[:len(data) // 2]))  # cut short: a flipped bit may still be JSON
    else:
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    line = resume_refused(refused, sandbox, record)
    stem = name.removesuffix(".json").removesuffix(".safetensors")
    assert WORDS[stem] in line and f"({name})" in line and str(record / "checkpoint") in line, line
    assert f"{name}) is {damage}" in line


def test_an_accelerate_checkpoint_of_pickles_is_refused_not_unpickled(record, payload, refused, sandbox):
    data, marker = payload
    folder = record / "checkpoint"
    for path in folder.iterdir():
        if path.name != "run.json":
            path.unlink()
    for name in ACCELERATE_FILES + ["model.safetensors"]:
        (folder / name).write_bytes(data)
    line = resume_refused(refused, sandbox, record)
    assert "manifest.json" in line and "pickle" in line
    assert not marker.exists()


def test_pickles_under_accelerate_s_names_are_never_read(record, payload, hpplug_register, hpplug_cli, sandbox):
    """Beside a good checkpoint, and in the folders a killed save leaves, they are ignored."""
    data, marker = payload
    for folder in ("checkpoint", "checkpoint.tmp", "checkpoint.old"):
        (record / folder).mkdir(exist_ok=True)
        for name in ACCELERATE_FILES:
            (record / folder / name).write_bytes(data)
    hpplug_register("crash-at", CrashAt)
    hpplug_register("keeper", Keeper)
    code, out, err = hpplug_cli("run", "--resume", str(record))
    assert code == 0, err
    assert f"run {record.name} finished" in out
    assert not marker.exists()
    assert sorted(p.name for p in record.glob("checkpoint*")) == ["checkpoint"], "the save tidied up"
    assert sorted(p.name for p in (record / "checkpoint").iterdir()) == sorted(FILES)


@pytest.mark.parametrize("forgery, words", [
    ("hidden", "the model state (model.*) does not fit this run: 1.weight is (8, 64)"),
    ("loop", "the loop state (loop.*) does not fit this run: update 99"),
    ("optimizer", "the optimizer state (optimizer.*) does not fit this run"),
    ("plugin", "the state of plugin keeper (plugin.keeper.*) does not fit this run"),
    ("rng", "the RNG state of process 0 (rng.0.*) does not fit this run"),
])
def test_a_well_formed_state_that_does_not_fit_the_run_is_refused(forgery, words, record, hpplug_register, hpplug_cli):
    """Files forged with a matching manifest: the content itself is checked when it is
    loaded, before anything trains (the record then says the run failed, nothing else)."""
    hpplug_register("crash-at", CrashAt)
    hpplug_register("keeper", Keeper)
    folder = record / "checkpoint"
    if forgery == "hidden":
        run = json.loads((folder / "run.json").read_text())
        run["config"]["plugin_params"]["mlp"]["hidden"] = 9
        (folder / "run.json").write_text(json.dumps(run))
    elif forgery == "loop":
        loop = json.loads((folder / "loop.json").read_text())
        loop["update"] = 99
        (folder / "loop.json").write_text(json.dumps(loop))
    elif forgery == "optimizer":
        (folder / "optimizer.json").write_text(json.dumps({"state": {}, "param_groups": [{"params": [7]}]}))
    elif forgery == "plugin":
        (folder / "plugin.keeper.json").write_text(json.dumps({"average": {"$tensor": "ema"}}))
    else:
        rng = json.loads((folder / "rng.0.json").read_text())
        rng["numpy"]["keys"] = [1, 2, 3]
        (folder / "rng.0.json").write_text(json.dumps(rng))
    reseal(folder)
    before = {p: p.read_bytes() for p in record.rglob("*") if p.is_file() and p.name != "summary.json"}
    code, out, err = hpplug_cli("run", "--resume", str(record))
    assert code == 2 and "Traceback" not in out + err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("Error: checkpoint ") and str(folder) in line and words in line, line
    assert {p: p.read_bytes() for p in record.rglob("*") if p.is_file() and p.name != "summary.json"} == before
    assert json.loads((record / "summary.json").read_text())["status"] == "failed"


def test_a_manifest_naming_files_outside_the_folder_is_refused(record, refused, sandbox):
    folder = record / "checkpoint"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["../../../notes.txt"] = {"bytes": 1, "sha256": "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert "the manifest (manifest.json) is damaged" in resume_refused(refused, sandbox, record)


# --- A kill at each step of a save; a full disk ------------------------------------------

RUN = ["--plugin", "dropout", "--optimizer", "adam", "--epochs", "1", "--mlp.hidden", "8", "--batch-size", "512",
       "--checkpoint-every", "1", "--log-every", "1", "--wandb-mode", "disabled"]


def faults(action: str, out: Path) -> list[dict]:
    """Each case of ``driver.py faults``: the save at update 2 of 3 (one checkpoint before it)."""
    proc = subprocess.run([sys.executable, DRIVER, "faults", action, "2", str(out), *RUN], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "faults.json").read_text())


def only_record(folder: Path) -> Path:
    (record,) = [p for p in folder.iterdir() if p.is_dir()]
    return record


@pytest.mark.slow
def test_a_save_killed_at_any_step_resumes_exactly(tmp_path):
    cases = faults("kill", tmp_path)
    assert len(cases) >= 25, "every filesystem call of the save was a kill point"
    left = [case["left"] for case in cases]  # folder -> the update its manifest saved (None: no manifest)
    assert {"checkpoint": 1, "checkpoint.tmp": None} in left, "killed while writing the new one"
    assert {"checkpoint": 1, "checkpoint.tmp": 2} in left, "killed with the new one complete, not in place"
    assert {"checkpoint.old": 1, "checkpoint.tmp": 2} in left, "killed between the two renames"
    assert {"checkpoint": 2, "checkpoint.old": 1} in left, "killed before or while deleting the old one"
    baseline = only_record(tmp_path / "baseline")
    for case in cases:
        assert case["ended"] == -signal.SIGKILL, case
        assert case["resumed"] == 0, (tmp_path / f"{case['case']}.resume.err").read_text()[-2000:]
        assert_same_run(only_record(tmp_path / str(case["case"])), baseline)


@pytest.mark.slow
def test_a_full_disk_during_a_save_fails_in_one_line_then_resumes_exactly(tmp_path):
    cases = faults("enospc", tmp_path)
    assert len(cases) >= 10, "every file of the save was written onto a full disk"
    baseline = only_record(tmp_path / "baseline")
    for case in cases:
        n = case["case"]
        record = only_record(tmp_path / str(n))
        err = (tmp_path / f"{n}.run.err").read_text()
        assert case["ended"] == 2 and "Traceback" not in err, err
        assert case["left"] == {"checkpoint": 1}, "the previous checkpoint, intact; the new one removed"
        (line,) = err.strip().splitlines()
        assert line.startswith(f"Error: cannot write the checkpoint in {record}: No space left on device ("), line
        assert f"resume with: hpplug run --resume {record}" in line
        assert case["resumed"] == 0, (tmp_path / f"{n}.resume.err").read_text()[-2000:]
        assert_same_run(record, baseline)


# --- Several processes ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(free_port()), DRIVER]
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ACCELERATE_USE_CPU": "1", **(env or {})})


TWO = ["run", "--plugin", "killer", "--plugin", "dropout", "--plugin", "tally", "--momentum", "0.9", "--epochs", "1",
       "--mlp.hidden", "8", "--batch-size", "64", "--checkpoint-every", "3", "--log-every", "1", "--wandb-mode", "disabled"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A two-process run straight through, and one SIGKILLed at update 8 (checkpoint of 6)."""
    root = tmp_path_factory.mktemp("two")
    proc = torchrun(*TWO, "--output-dir", str(root / "baseline"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed = torchrun(*TWO, "--output-dir", str(root / "cut"), env={"HPPLUG_TEST_KILL_AT": "8"})
    assert killed.returncode != 0
    return only_record(root / "baseline"), only_record(root / "cut")


@pytest.mark.slow
def test_two_processes_resume_exactly(two_processes, tmp_path):
    baseline, cut = two_processes
    record = tmp_path / cut.name
    shutil.copytree(cut, record)
    assert json.loads((record / "checkpoint" / "manifest.json").read_text())["processes"] == 2
    proc = torchrun("run", "--resume", str(record))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(record, baseline)


@pytest.mark.parametrize("name", ["rng.1.json", "rng.1.safetensors"])
def test_a_missing_rng_state_of_process_1_is_refused(name, two_processes, sandbox, refused):
    record = sandbox.runs / two_processes[1].name
    shutil.copytree(two_processes[1], record)
    (record / "checkpoint" / name).unlink()
    line = resume_refused(refused, sandbox, record)
    assert f"the RNG state of process 1 ({name}) is missing" in line and str(record / "checkpoint") in line
