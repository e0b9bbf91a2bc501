"""Bring your own model and data: ``MODULE:ATTR`` from the working folder, an ImageFolder of
PNGs the test writes, and the streaming path, which must train exactly like the in-memory one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DRIVER = str(Path(__file__).with_name("driver.py"))
VOLATILE = {"time", "train/samples_per_s"}
QUIET = ["--wandb-mode", "disabled"]

USER_CODE = (Path(__file__).parent / "files" / "mycode.py").read_text()


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mycode.py").write_text(USER_CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mycode", None)


def summary_of(output: Path) -> dict:
    (record,) = [p for p in output.iterdir() if p.name != "wandb"]
    return json.loads((record / "summary.json").read_text())


def test_own_tabular_data_and_own_model_function(hpplug_cli, user_folder):
    code, out, err = hpplug_cli("run", "--model", "mycode:mlp", "--dataset", "mycode:wine_like", "--epochs", "3",
                                "--batch-size", "32", *QUIET, "--output-dir", "runs")
    assert code == 0, err
    summary = summary_of(user_folder / "runs")
    assert summary["val/accuracy"] > 0.8 and summary["test/accuracy"] > 0.8
    assert summary["test/samples"] == 80 and summary["val/samples"] == 40  # 10% of 400 held out


def test_own_module_class_on_a_built_in_data_set(hpplug_cli, user_folder):
    code, out, err = hpplug_cli("run", "--model", "mycode:Net", "--epochs", "1", *QUIET, "--output-dir", "runs")
    assert code == 0, err
    config = json.loads(next((user_folder / "runs").iterdir()).joinpath("config.json").read_text())
    assert config["model"] == "mycode:Net" and config["dataset"] == "digits"


BAD_AT_BUILD = [
    (["--model", "mycode:not_a_module", "--dataset", "mycode:wine_like"], "returned a str, not a torch.nn.Module"),
    (["--model", "mycode:wrong_width", "--dataset", "mycode:wine_like"], "[batch, 3]"),
    (["--model", "mycode:mlp", "--dataset", "mycode:triples"], "(input, label) pairs"),
    (["--model", "mycode:mlp", "--dataset", "mycode:ragged"], "unequal shape"),
    (["--dataset", "mycode:not_datasets"], "expected (train, test)"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_AT_BUILD, ids=[" ".join(a) for a, _ in BAD_AT_BUILD])
def test_bad_user_code_fails_before_training_with_one_line(hpplug_cli, user_folder, argv, message):
    code, out, err = hpplug_cli("run", *argv, *QUIET, "--output-dir", "runs")
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("Error: ") and message in line
    summary = summary_of(user_folder / "runs")
    assert summary["status"] == "failed" and message in summary["error"]
    assert summary.get("updates", 0) == 0


# --- ImageFolder and the streaming path ------------------------------------------------


def write_image_folder(root: Path, per_class: int = 24, size: int = 10) -> Path:
    """PNGs of three classes (a bright square at a class-dependent corner) in train/ and test/."""
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(3)
    for split, n in (("train", per_class), ("test", per_class // 3)):
        for c, name in enumerate(("left", "middle", "right")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = torch.randint(0, 60, (3, size, size), generator=g, dtype=torch.uint8)
                img[:, 2:6, 2 + 2 * c:6 + 2 * c] = 250
                write_png(img, str(folder / f"{i:03d}.png"))
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"))


def driver(*argv: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, DRIVER, *argv], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


def metric_rows(output: Path) -> list[dict]:
    (record,) = [p for p in output.iterdir() if p.name != "wandb"]
    lines = (record / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


IMAGE_RUN = ["run", "--dataset", "imagefolder", "--plugin", "crop", "--plugin", "flip", "--epochs", "2",
             "--batch-size", "16", "--log-every", "1", *QUIET]


@pytest.mark.slow
def test_image_folder_streamed_and_in_memory_train_alike(image_folder, tmp_path):
    """The same sample order, the same augmentation draws, the same losses, on both paths."""
    for loader in ("memory", "stream"):
        (tmp_path / f"rec-{loader}").mkdir()
        proc = driver(*IMAGE_RUN, "--data-root", str(image_folder), "--loader", loader, "--workers", "2",
                      "--plugin", "recorder", "--output-dir", str(tmp_path / loader),
                      env={"HPPLUG_TEST_RECORD": str(tmp_path / f"rec-{loader}")}, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    order = {loader: (tmp_path / f"rec-{loader}" / "rank0.jsonl").read_text() for loader in ("memory", "stream")}
    assert order["memory"] == order["stream"]
    assert metric_rows(tmp_path / "memory") == metric_rows(tmp_path / "stream")
    summary = summary_of(tmp_path / "stream")
    assert summary["test/samples"] == 24 and summary["val/samples"] == 7  # 10% of 72 held out


@pytest.mark.slow
def test_streaming_run_killed_mid_epoch_resumes_exactly(image_folder, tmp_path):
    args = [*IMAGE_RUN, "--data-root", str(image_folder), "--loader", "stream", "--workers", "1",
            "--plugin", "killer", "--checkpoint-every", "3"]
    base = driver(*args, "--output-dir", str(tmp_path / "base"), cwd=tmp_path)
    assert base.returncode == 0, base.stderr[-3000:]
    cut = driver(*args, "--output-dir", str(tmp_path / "cut"), env={"HPPLUG_TEST_KILL_AT": "5"}, cwd=tmp_path)
    assert cut.returncode == -signal.SIGKILL
    resumed = driver("run", "--resume", "auto", "--output-dir", str(tmp_path / "cut"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "base")
    assert summary_of(tmp_path / "cut")["test/accuracy"] == summary_of(tmp_path / "base")["test/accuracy"]


def test_validation_split_is_disjoint_from_training_and_stable(tmp_path):
    from hpplug import Splits, TensorSplit
    from hpplug.feed import prepare

    x, y = torch.arange(200, dtype=torch.float32).unsqueeze(1), torch.arange(200) % 4
    runs = [prepare(Splits(TensorSplit(x, y)), loader=loader, workers=0, val_fraction=0.2, device=torch.device("cpu"))
            for loader in ("memory", "memory", "stream")]
    train_ids = [set(r.train.index.tolist()) for r in runs]
    val_ids = [set(r.val.index.tolist()) for r in runs]
    assert len(val_ids[0]) == 40 and len(train_ids[0]) == 160
    assert not train_ids[0] & val_ids[0] and train_ids[0] | val_ids[0] == set(range(200))
    assert train_ids[0] == train_ids[1] == train_ids[2] and val_ids[0] == val_ids[1] == val_ids[2]


def write_cifar(root: Path, n_train: int = 48, n_test: int = 16) -> Path:
    """CIFAR-10's python format: pickled dicts of uint8 rows, as torchvision reads them."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 10, (n_train + n_test,), generator=g).tolist()
    data = torch.randint(0, 256, (n_train + n_test, 3072), generator=g, dtype=torch.uint8).numpy()
    per = n_train // 5
    for i in range(5):
        rows = slice(i * per, (i + 1) * per)
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": data[rows], b"labels": labels[rows]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data[n_train:], b"labels": labels[n_train:]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("model", ["torchvision/resnet18", "timm/resnet18"])
def test_zoo_models_train_on_cifar_format_files(hpplug_cli, tmp_path, model):
    root = write_cifar(tmp_path / "data")
    code, out, err = hpplug_cli("run", "--model", model, "--dataset", "cifar10", "--data-root", str(root),
                                "--epochs", "1", "--batch-size", "16", *QUIET, "--output-dir", str(tmp_path / "runs"))
    assert code == 0, err
    summary = summary_of(tmp_path / "runs")
    assert summary["status"] == "finished" and summary["test/samples"] == 16
    config = json.loads(next((tmp_path / "runs").iterdir()).joinpath("config.json").read_text())
    assert config[f"{model.split('/')[0]}.arch"] == "resnet18"


@pytest.mark.slow
def test_own_code_run_killed_mid_epoch_resumes_exactly(user_folder):
    """Plugin state is keyed by name, and MODULE:ATTR names one too (no ':' in its files)."""
    args = ["run", "--model", "mycode:mlp", "--dataset", "mycode:wine_like", "--epochs", "3", "--log-every", "1",
            "--plugin", "killer", "--checkpoint-every", "3", *QUIET]
    env = {"PYTHONPATH": os.pathsep.join([str(user_folder), os.environ.get("PYTHONPATH", "")])}
    base = driver(*args, "--output-dir", "base", env=env, cwd=user_folder)
    assert base.returncode == 0, base.stderr[-3000:]
    cut = driver(*args, "--output-dir", "cut", env={**env, "HPPLUG_TEST_KILL_AT": "8"}, cwd=user_folder)
    assert cut.returncode == -signal.SIGKILL
    resumed = driver("run", "--resume", "auto", "--output-dir", "cut", env=env, cwd=user_folder)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metric_rows(user_folder / "cut") == metric_rows(user_folder / "base")
