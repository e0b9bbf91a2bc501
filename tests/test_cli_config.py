"""``hpplug run --config FILE`` and ``--print-config``: the printed configuration loads back
to the same run, a run's own config.json loads as a file, the command line overrides the
file. Real command lines, real runs and their records; bad files are in
tests/hostile/test_config_file.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

RUN = ["--epochs", "1", "--wandb-mode", "disabled"]
# Non-default values everywhere: core options of every group, plugins with tuple, null and
# choice parameters, a model parameter.
VARIED = ["--plugin", "cosine", "--plugin", "normalize", "--plugin", "dropout", "--lr", "0.05",
          "--batch-size", "32", "--optimizer", "adam", "--seed", "7", "--val-fraction", "0.2",
          "--mixed-precision", "bf16", "--log-every", "5", "--checkpoint-every", "1epoch",
          "--cosine.eta_min", "1e-5", "--cosine.interval", "update", "--normalize.mean", "0.4",
          "--dropout.p", "0.25", "--mlp.hidden", "64", "--project", "my-project"]


def printed(hpplug_cli, *argv: str) -> str:
    code, out, err = hpplug_cli("run", *argv, "--print-config")
    assert code == 0, err
    return out


def config_json(folder: Path) -> dict:
    (record,) = [p for p in folder.iterdir() if (p / "config.json").is_file()]
    return json.loads((record / "config.json").read_text())


def test_print_config_loads_back_to_the_same_configuration(hpplug_cli, tmp_path: Path) -> None:
    first = printed(hpplug_cli, *VARIED)
    data = yaml.safe_load(first)
    assert data["plugins"] == ["cosine", "normalize", "dropout"] and data["lr"] == 0.05
    assert data["normalize"] == {"mean": [0.4], "std": [0.5]}  # every parameter, defaults included
    assert data["cosine"]["t_max"] is None and data["mlp"] == {"hidden": 64} and data["digits"] == {}
    assert data["mixed_precision"] == "bf16" and data["checkpoint_every"] == "1epoch"
    path = tmp_path / "run.yaml"
    path.write_text(first)
    assert printed(hpplug_cli, "--config", str(path)) == first


def test_two_real_runs_from_the_command_line_and_from_its_printed_config_are_configured_alike(
        hpplug_cli, tmp_path: Path) -> None:
    argv = [*VARIED, *RUN]
    path = tmp_path / "run.yaml"
    path.write_text(printed(hpplug_cli, *argv, "--output-dir", str(tmp_path / "a")))
    code, _, err = hpplug_cli("run", *argv, "--output-dir", str(tmp_path / "a"))
    assert code == 0, err
    code, _, err = hpplug_cli("run", "--config", str(path), "--output-dir", str(tmp_path / "b"))
    assert code == 0, err
    a, b = config_json(tmp_path / "a"), config_json(tmp_path / "b")
    assert a.pop("output_dir") == str(tmp_path / "a") and b.pop("output_dir") == str(tmp_path / "b")
    assert a == b
    assert a["normalize.mean"] == [0.4] and a["cosine.eta_min"] == 1e-5 and a["plugins"][0] == "cosine"


def test_a_runs_config_json_is_a_config_file(hpplug_cli, tmp_path: Path) -> None:
    code, _, err = hpplug_cli("run", *VARIED, *RUN, "--output-dir", str(tmp_path / "runs"))
    assert code == 0, err
    (record,) = (tmp_path / "runs").iterdir()
    expected = printed(hpplug_cli, *VARIED, *RUN, "--output-dir", str(tmp_path / "runs"))
    assert printed(hpplug_cli, "--config", str(record / "config.json")) == expected
    assert printed(hpplug_cli, "--config", str(record)) == expected  # the record's folder names its config.json


def test_the_command_line_overrides_the_file(hpplug_cli, tmp_path: Path) -> None:
    path = tmp_path / "base.yaml"
    path.write_text("epochs: 3\nlr: 0.05\nbatch-size: 16\nplugins: [cosine, dropout]\n"
                    "cosine: {eta_min: 0.01}\ndropout.p: 0.3\nmodel: cnn\ncnn: {width: 8}\n")
    data = yaml.safe_load(printed(hpplug_cli, "--config", str(path)))
    assert (data["epochs"], data["lr"], data["batch_size"], data["plugins"]) == (3, 0.05, 16, ["cosine", "dropout"])
    assert (data["cosine"]["eta_min"], data["dropout"]["p"], data["cnn"]["width"]) == (0.01, 0.3, 8)

    # an option equal to its default still counts: it was given
    data = yaml.safe_load(printed(hpplug_cli, "--config", str(path), "--epochs", "10", "--cosine.eta_min", "0.02"))
    assert (data["epochs"], data["lr"], data["cosine"]["eta_min"], data["dropout"]["p"]) == (10, 0.05, 0.02, 0.3)

    # --plugin replaces the file's list: the parameters of plugins no longer used go with them
    data = yaml.safe_load(printed(hpplug_cli, "--config", str(path), "--plugin", "step"))
    assert data["plugins"] == ["step"] and "cosine" not in data and "dropout" not in data
    assert data["step"]["step_size"] == 30 and data["lr"] == 0.05

    # another model: the file's model parameters are not its
    data = yaml.safe_load(printed(hpplug_cli, "--config", str(path), "--model", "mlp"))
    assert data["model"] == "mlp" and "cnn" not in data and data["mlp"] == {"hidden": 500}


def test_another_architecture_on_the_command_line_replaces_the_files(hpplug_cli, tmp_path: Path) -> None:
    path = tmp_path / "timm.yaml"
    path.write_text(printed(hpplug_cli, "--model", "timm/resnet18", "--timm.pretrained", "true"))
    data = yaml.safe_load(printed(hpplug_cli, "--config", str(path), "--model", "timm/convnext_atto"))
    assert data["model"] == "timm/convnext_atto" and data["timm"] == {"arch": "convnext_atto", "pretrained": True}


def test_yaml_as_people_write_it(hpplug_cli, tmp_path: Path) -> None:
    """Unquoted ``no`` (YAML 1.1 reads false), ``1e-3`` (PyYAML reads text), a comma list."""
    path = tmp_path / "hand.yaml"
    path.write_text("# my run\nmixed_precision: no\nlr: 1e-3\nplugins: cosine,dropout\nepochs: 2.0\n")
    data = yaml.safe_load(printed(hpplug_cli, "--config", str(path)))
    assert (data["mixed_precision"], data["lr"], data["plugins"], data["epochs"]) == (
        "no", 0.001, ["cosine", "dropout"], 2)
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert yaml.safe_load(printed(hpplug_cli, "--config", str(tmp_path / "empty.yaml"))) == \
        yaml.safe_load(printed(hpplug_cli))


def test_print_config_starts_nothing(hpplug_cli, tmp_path: Path) -> None:
    out = printed(hpplug_cli, "--output-dir", str(tmp_path / "runs"))
    assert out.startswith("# hpplug ") and "# Optimization\nepochs: 10\n" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_best_trial_of_a_sweep_is_written_as_a_config_file(hpplug_cli, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from hpplug.sweep.command import sweep_command

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump({
        "method": "grid", "metric": {"name": "val/accuracy", "goal": "maximize"},
        "command": ["${env}", "hpplug", "run", "${args}"],
        "parameters": {"epochs": {"value": 2}, "lr": {"values": [0.003, 0.3]}, "plugin": {"value": ["cosine"]},
                       "cosine.eta_min": {"value": 0.001}}}))
    out = CliRunner().invoke(sweep_command, [str(spec), "--dir", "sw", "--wandb-mode", "disabled"])
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "sw" / "summary.json").read_text())
    assert summary["best"]["values"]["lr"] == 0.3
    best = tmp_path / "sw" / "best-config.yaml"
    assert "hpplug run --config sw/best-config.yaml" in out.output
    data = yaml.safe_load(best.read_text())
    assert (data["lr"], data["epochs"], data["plugins"], data["cosine"]["eta_min"]) == (0.3, 2, ["cosine"], 0.001)
    # the whole configuration of the best trial, as its record holds it
    assert printed(hpplug_cli, "--config", str(best)) == printed(hpplug_cli, "--config", summary["best"]["record"])
