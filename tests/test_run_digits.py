"""A whole run on the bundled digits data with W&B offline, checked in what W&B recorded."""

import json
import math

import pytest

from hpplug.wandb_file import find_run_files, read_run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The README's command: ``hpplug run --plugin cosine --plugin dropout`` (3 epochs)."""
    from hpplug.cli import main

    out = tmp_path_factory.mktemp("runs")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--plugin", "cosine", "--plugin", "dropout", "--epochs", "3",
              "--cosine.eta_min=0.001", "--dropout.p=0.3", "--wandb-mode", "offline",
              "--log-every", "5", "--output-dir", str(out)])
    assert exit_info.value.code == 0
    (record,) = [p for p in out.iterdir() if p.name != "wandb"]
    (wandb_file,) = find_run_files(out / "wandb")
    return record, read_run(wandb_file, wait=30)


def test_local_record_holds_config_metrics_and_summary(digits_run):
    record, _ = digits_run
    config = json.loads((record / "config.json").read_text())
    assert config["plugins"] == ["cosine", "dropout"]
    assert config["cosine.eta_min"] == 0.001 and config["dropout.p"] == 0.3
    summary = json.loads((record / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert 0.5 < summary["test/accuracy"] <= 1.0
    assert summary["train/samples_per_s"] > 0
    lines = [json.loads(l) for l in (record / "metrics.jsonl").read_text().splitlines()]
    epochs = [l for l in lines if "val/accuracy" in l]
    assert [l["epoch"] for l in epochs] == [1, 2, 3]
    assert epochs[-1]["val/accuracy"] == summary["val/accuracy"] and lines[-1]["test/accuracy"] == summary["test/accuracy"]


def test_wandb_recorded_config_history_and_summary(digits_run):
    record, run = digits_run
    assert run.run_id == record.name
    assert run.project == "hpplug"
    assert run.config["lr"] == 0.1 and run.config["batch_size"] == 64
    assert run.config["cosine.eta_min"] == 0.001
    assert run.config["plugin_versions"]["cosine"].startswith("hpplug-schedulers==")
    assert run.config["plugin_versions"]["dropout"].startswith("hpplug-regularizers==")
    train_rows = [r for r in run.history if "lr" in r and "val/accuracy" not in r]
    assert len(train_rows) >= 5 and all(r["_step"] % 5 == 0 for r in train_rows)
    summary = json.loads((record / "summary.json").read_text())
    assert run.summary["test/accuracy"] == {"max": pytest.approx(summary["test/accuracy"])}  # define_metric's summary
    assert run.summary["train/samples_per_s"] == pytest.approx(summary["train/samples_per_s"])
    assert run.exit_code == 0


def test_logged_lr_follows_torch_cosine_per_epoch(digits_run):
    """Per-epoch cosine over the run's 3 epochs from 0.1 to eta_min 0.001."""
    _, run = digits_run
    epoch_rows = sorted((r for r in run.history if "val/accuracy" in r), key=lambda r: r["_step"])
    expected = [0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    assert [r["lr"] for r in epoch_rows] == pytest.approx(expected, rel=1e-9)
