"""early-stopping: on a scripted metric the run stops at exactly the epoch the rule says,
with status ``stopped``, the reason in its summary and the test split still evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpplug import Plugin, hookimpl
from hpplug.testing import read_metrics
from hpplug_methods.early_stopping import EarlyStopping

TINY = {"mlp": {"hidden": 16}}
UPDATES_PER_EPOCH = 6  # the digits training split, 1293 samples, in batches of 256


class Scripted(Plugin):
    """Reports ``scripted/<name>`` = the script's value for the epoch just finished."""

    name, script = "score", [0.0]

    @hookimpl
    def hpplug_epoch_end(self, progress) -> dict[str, float]:
        return {f"scripted/{Scripted.name}": Scripted.script[progress.epoch - 1]}


@pytest.fixture
def scripted(hpplug_register):
    hpplug_register("early-stopping", EarlyStopping)
    hpplug_register("scripted", Scripted)

    def script(values: list[float], name: str = "score") -> dict:
        Scripted.name, Scripted.script = name, values
        return dict(plugins=["scripted", "early-stopping"], epochs=len(values), batch_size=256)

    return script


CASES = {  # script, parameters, the epoch it stops at (None: it trains every epoch), reason
    "max, patience 3": ([0.5, 0.6, 0.7, 0.65, 0.7, 0.69, 0.9, 0.9], {}, 6,
                        "scripted/score did not improve for 3 epochs (best 0.7000 at epoch 3)"),
    "min_delta": ([0.5, 0.6, 0.605, 0.609, 0.62, 0.7], {"min_delta": 0.01, "patience": 2}, 4,
                  "scripted/score did not improve by more than 0.01 for 2 epochs (best 0.6000 at epoch 2)"),
    "without min_delta the same script goes on": ([0.5, 0.6, 0.605, 0.609, 0.62, 0.7], {"patience": 2}, None, None),
    "auto is min for a loss": ([1.0, 0.8, 0.9, 0.7, 0.75, 0.71, 0.1], {"patience": 2, "metric": "scripted/loss"}, 6,
                               "scripted/loss did not improve for 2 epochs (best 0.7000 at epoch 4)"),
    "max on a loss": ([1.0, 0.8, 0.9, 0.7, 0.75, 0.71, 0.1], {"patience": 2, "metric": "scripted/loss", "mode": "max"},
                      3, "scripted/loss did not improve for 2 epochs (best 1.0000 at epoch 1)"),
    "min on a score": ([0.5, 0.6, 0.4, 0.45], {"patience": 1, "mode": "min"}, 2,
                       "scripted/score did not improve for 1 epoch (best 0.5000 at epoch 1)"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_run_stops_at_the_epoch_the_rule_says(case, scripted, hpplug_train):
    values, params, stop_at, reason = CASES[case]
    name = params.get("metric", "scripted/score").split("/")[1]
    result = hpplug_train(**scripted(values, name), params={**TINY, "early-stopping": {"metric": "scripted/score",
                                                                                        **params}})
    s = result.summary
    epochs = stop_at or len(values)
    assert (result.status, s.get("stop_reason"), s["epochs_done"]) == ("stopped" if stop_at else "finished", reason,
                                                                       epochs)
    assert s["updates"] == epochs * UPDATES_PER_EPOCH
    rows = read_metrics(result)
    assert [row["epoch"] for row in rows if "val/accuracy" in row] == list(range(1, epochs + 1))
    assert "train/loss" not in rows[-1] and rows[-1]["test/samples"] == 360 and "test/accuracy" in s


def test_a_missing_metric_is_one_line_naming_it_and_the_metrics_there_are(scripted, hpplug_cli, tmp_path):
    scripted([0.5, 0.6])
    code, out, err = hpplug_cli("run", "--plugin", "scripted", "--plugin", "early-stopping", "--epochs", "2",
                                "--early-stopping.metric", "val/acc", "--mlp.hidden", "16", "--wandb-mode", "disabled",
                                "--output-dir", str(tmp_path), "--data-root", str(tmp_path / "data"))
    *progress, error = err.splitlines()  # the epoch's line, then the error
    assert code == 2 and [line for line in progress if line.startswith("epoch ")] == progress
    assert error.startswith("Error: --early-stopping.metric 'val/acc' is not among this run's metrics after epoch 1; "
                          "set it to one of: ")
    assert "val/accuracy" in error and "scripted/score" in error


def test_a_crash_in_a_patience_window_resumes_and_stops_at_the_same_epoch(scripted, hpplug_register, hpplug_train,
                                                                          tmp_path):
    """The checkpoint of update 30 (in epoch 5) holds two epochs without improvement; the
    run crashes at update 35 and, resumed, stops after epoch 6 as the uninterrupted run."""
    from tests.test_resume import CrashAt, crash_and_resume, rows, weights

    hpplug_register("crash-at", CrashAt)
    options = scripted([0.5, 0.9, 0.8, 0.85, 0.7, 0.6, 0.95, 0.99])
    options.update(plugins=["crash-at"] + options["plugins"], log_every=4, checkpoint_every="10",
                   params={**TINY, "early-stopping": {"metric": "scripted/score", "patience": 4}})
    baseline, cut = crash_and_resume(hpplug_train, tmp_path, options)
    summaries = [json.loads((record / "summary.json").read_text()) for record in (baseline, cut)]
    for summary in summaries:
        assert (summary["status"], summary["epochs_done"]) == ("stopped", 6)
        assert summary["stop_reason"] == "scripted/score did not improve for 4 epochs (best 0.9000 at epoch 2)"
    assert summaries[0]["test/accuracy"] == summaries[1]["test/accuracy"]
    assert rows(cut) == rows(baseline)
    a, b = weights(cut), weights(baseline)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_run_that_stopped_has_ended_and_is_not_resumed(scripted, hpplug_train, hpplug_cli, tmp_path):
    """A stopped run is over, like a finished one: ``--resume`` on it is refused in one line
    and leaves the record as it was; ``--resume auto`` does not pick it."""
    result = hpplug_train(**scripted([0.9, 0.8, 0.7, 0.6, 0.5]), checkpoint_every="1epoch",
                          params={**TINY, "early-stopping": {"metric": "scripted/score", "patience": 2}})
    record = Path(result.record_dir)
    before = {p.name: p.read_bytes() for p in record.iterdir() if p.is_file()}
    code, out, err = hpplug_cli("run", "--resume", str(record))
    assert code == 2 and err.strip() == f"Error: run {record.name} already ended (stopped); nothing to resume"
    code, out, err = hpplug_cli("run", "--resume", "auto", "--output-dir", str(record.parent))
    assert code == 2 and "no unfinished run with a checkpoint" in err
    assert {p.name: p.read_bytes() for p in record.iterdir() if p.is_file()} == before
    summary = json.loads((record / "summary.json").read_text())
    assert (summary["status"], summary["epochs_done"], summary["updates"]) == ("stopped", 3, 18)


@pytest.mark.parametrize("state", [None, {}, {"best": "0.5", "best_epoch": 1, "bad_epochs": 0},
                                   {"best": float("nan"), "best_epoch": 1, "bad_epochs": 0},
                                   {"best": 0.5, "best_epoch": -1, "bad_epochs": 0},
                                   {"best": 0.5, "best_epoch": 1, "bad_epochs": 1.0}])
def test_a_damaged_state_is_refused(state):
    with pytest.raises(ValueError, match="early-stopping's best value"):
        EarlyStopping().load_state_dict(state)
    restored = EarlyStopping()
    saved = {"best": 0.5, "best_epoch": 2, "bad_epochs": 1}
    restored.load_state_dict(saved)
    assert restored.state_dict() == saved


def test_a_value_that_is_not_a_number_never_improves():
    from types import MappingProxyType

    from hpplug import Progress

    def run(values: list[float]) -> list[str | None]:
        plugin = EarlyStopping(metric="val/loss", patience=2)
        return [plugin.hpplug_should_stop(MappingProxyType({"val/loss": v}), Progress(0, epoch, 1, 9))
                for epoch, v in enumerate(values, 1)]

    nan = float("nan")
    assert run([0.5, nan, nan]) == [None, None, "val/loss did not improve for 2 epochs (best 0.5000 at epoch 1)"]
    assert run([nan, float("inf")]) == [None, "val/loss did not improve for 2 epochs (never a finite number)"]
    assert run([nan, 0.7, 0.8, 0.6]) == [None, None, None, None]
