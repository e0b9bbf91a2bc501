"""Help a person can read, "did you mean", and shell completion: the real command line's output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpplug.config import OPTION_GROUPS, OPTIONS, OTHER_GROUP, option_groups


def sections(text: str) -> dict[str, str]:
    """``Title:`` blocks of click's help -> their text."""
    out, title = {}, None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            title = line[:-1]
            out[title] = ""
        elif title is not None:
            out[title] += line + "\n"
    return out


def test_hpplug_alone_prints_the_usage_and_exits_0(hpplug_cli) -> None:
    code, out, err = hpplug_cli()
    assert code == 0 and err == ""
    assert out.startswith("Usage: hpplug ") and "Commands:" in out
    for command in ("run", "plugins", "sweep", "new-plugin"):
        assert re.search(rf"^  {command} ", out, re.M), command


def test_run_help_groups_the_core_options(hpplug_cli) -> None:
    code, out, _ = hpplug_cli("run", "--help")
    assert code == 0
    found = sections(out)
    titles = [t for t in found if t not in ("Usage", "Options")]
    groups = option_groups()
    assert titles[:len(groups) + 1] == ["Run", *groups]
    for title, names in groups.items():
        for name in names:
            assert f"--{name.replace('_', '-')}" in found[title], (title, name)
    for option in ("--plugin", "--config FILE", "--print-config", "--resume", "--help"):
        assert option in found["Run"]


def test_every_core_option_has_a_named_group() -> None:
    """A new option lands in the fallback group; this says to give it its place in OPTION_GROUPS."""
    assert OTHER_GROUP not in option_groups(), f"add {option_groups().get(OTHER_GROUP)} to OPTION_GROUPS"
    assert sum(len(v) for v in option_groups().values()) == len(OPTIONS)


def test_an_option_missing_from_the_table_still_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpplug import config

    monkeypatch.setattr(config, "OPTIONS", [*config.OPTIONS, ("shiny_new", config.Count(1), "New.")])
    monkeypatch.setitem(config.OPTION_TYPES, "shiny_new", config.Count(1))
    groups = config.option_groups()
    assert groups[OTHER_GROUP] == ["shiny_new"] and list(groups) == [*OPTION_GROUPS, OTHER_GROUP]


def test_run_help_lists_plugin_options_per_plugin(hpplug_cli) -> None:
    code, out, _ = hpplug_cli("run", "--help")
    found = sections(out)
    cosine = next(text for title, text in found.items() if title.startswith("cosine (scheduler; hpplug-schedulers"))
    assert "--cosine.eta_min FLOAT" in cosine and "--cosine.t_max INT" in cosine and "--dropout" not in cosine
    for plugin in ("dropout", "crop", "mlp", "cnn", "imagefolder", "lr-scaling"):
        assert any(title.startswith(f"{plugin} (") for title in found), plugin


@pytest.mark.parametrize(("argv", "shown", "hidden"), [
    (["--plugin", "cosine"], ["cosine", "mlp"], ["dropout", "step", "cnn", "imagefolder"]),
    (["-p", "step,dropout", "--model=cnn"], ["step", "dropout", "cnn"], ["cosine", "mlp"]),
    (["--plugin=['crop']", "--dataset", "imagefolder"], ["crop", "mlp", "imagefolder"], ["cosine"]),
    (["--model", "timm/resnet18"], ["timm"], ["mlp", "cosine", "torchvision"]),
])
def test_run_help_with_plugins_shows_only_what_applies(hpplug_cli, argv, shown, hidden) -> None:
    code, out, _ = hpplug_cli("run", *argv, "--help")
    assert code == 0
    out = out[out.index("\nRun:"):]  # the options, not the description's example
    titles = [t.split(" (")[0] for t in sections(out) if " (" in t]
    for name in shown:
        assert name in titles, name
    assert [n for n in titles if n in hidden] == []
    for name in hidden:
        assert f"--{name}." not in out
    assert "Epochs to train." in out  # the core options are always there
    assert "hpplug plugins NAME" in " ".join(out.split())


def test_run_help_with_a_config_file_shows_its_plugins(hpplug_cli, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("plugins: [dropout]\nmodel: cnn\n")
    _, out, _ = hpplug_cli("run", "--config", str(path), "--help")
    out = out[out.index("\nRun:"):]
    assert "--dropout.p" in out and "--cnn.width" in out and "--cosine." not in out and "--mlp." not in out


def test_plugins_name_shows_one_plugin_in_full(hpplug_cli) -> None:
    code, out, err = hpplug_cli("plugins", "crop")
    assert code == 0, err
    first, *rest = out.splitlines()
    assert first.startswith("crop  [augmentation]  hpplug-augment ") and first.endswith("active")
    assert "  hooks: hpplug_transform_batch" in rest
    assert "    --crop.padding  int = 4  (>= 0)  zero border added on every side before cropping" in rest
    assert "In training, pads every image with `padding` zero pixels" in " ".join(out.split())  # its card
    assert any(line.strip().startswith("method card: ") and line.endswith("crop/README.md") for line in rest)
    code, out, _ = hpplug_cli("plugins", "step")
    assert "slot: lr-schedule" in out and "--step.interval  str = 'epoch'  (one of epoch, update)" in out


def test_plugins_json_gives_ranges_as_fields(hpplug_cli) -> None:
    code, out, _ = hpplug_cli("plugins", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    params = {p["name"]: p for p in rows["dropout"]["params"]}
    assert params["p"] == {"name": "p", "type": "float", "default": 0.5, "min": 0.0, "max": 0.99, "choices": None,
                           "help": params["p"]["help"]}
    interval = {p["name"]: p for p in rows["cosine"]["params"]}["interval"]
    assert interval["choices"] == ["epoch", "update"] and interval["min"] is None and interval["default"] == "epoch"
    assert all("range" not in p for row in rows.values() for p in row["params"])
    mean = {p["name"]: p for p in rows["normalize"]["params"]}["mean"]
    assert mean["type"] == "tuple" and mean["default"] == [0.5]
    code, out, _ = hpplug_cli("plugins", "cosine", "--json")
    one = json.loads(out)
    assert one["name"] == "cosine" and one["params"] == rows["cosine"]["params"]
    assert one["card"].startswith("**What it does.**") and one["card_path"].endswith("cosine/README.md")


# --- did you mean -----------------------------------------------------------------------

MISSPELT = [
    (["run", "--epoch", "3"], "unknown option --epoch; did you mean --epochs?"),
    (["run", "--epoch=3"], "unknown option --epoch; did you mean --epochs?"),
    (["run", "--batch_sise", "3"], "did you mean --batch-size"),
    (["run", "--plugin", "cosine", "--cosine.eta-min=0.1"], "unknown parameter --cosine.eta-min; did you mean "
                                                             "--cosine.eta_min?"),
    (["run", "--cosin.eta_min=0.1"], "unknown plugin 'cosin'; did you mean --cosine.eta_min?"),
    (["run", "--plugin", "cosin"], "unknown plugin 'cosin'; did you mean cosine?"),
    (["run", "--plugin", "dropuot,cosine"], "unknown plugin 'dropuot'; did you mean dropout?"),
    (["run", "--model", "mpl"], "unknown model 'mpl'; did you mean mlp?"),
    (["run", "--dataset", "mnits"], "unknown dataset 'mnits'; did you mean mnist?"),
    (["rn"], "no command 'rn'; did you mean run?"),
    (["plugins", "cosin"], "no plugin named 'cosin'; did you mean cosine?"),
]


@pytest.mark.parametrize(("argv", "said"), MISSPELT, ids=[" ".join(a) for a, _ in MISSPELT])
def test_a_misspelling_gets_the_right_spelling_in_one_line(hpplug_cli, tmp_path: Path, argv, said) -> None:
    code, out, err = hpplug_cli(*argv, *(["--output-dir", str(tmp_path)] if argv[0] == "run" else []))
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("Error: ") and said in line, line
    assert not list(tmp_path.iterdir())


def test_nothing_close_suggests_nothing(hpplug_cli) -> None:
    _, _, err = hpplug_cli("run", "--zzzzqq", "1")
    assert err.strip() == "Error: unknown option --zzzzqq; see `hpplug run --help`"


# --- shell completion --------------------------------------------------------------------


DRIVER = """
import contextlib, io, json, os, sys
from hpplug.cli import main
answers = []
for words in json.loads(sys.argv[1]):
    line = ["hpplug", *words]
    os.environ.update(_HPPLUG_COMPLETE="bash_complete", COMP_WORDS=" ".join(line), COMP_CWORD=str(len(line) - 1))
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # click writes the answer as bytes
    with contextlib.redirect_stdout(out):
        try:
            main([])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
    out.flush()
    answers.append([item.split(",", 1)[1] for item in out.buffer.getvalue().decode().splitlines()])
print(json.dumps(answers))
"""


def complete(*lines: list[str]) -> list[list[str]]:
    """What bash completion offers after each ``hpplug WORDS`` (the last word is being typed),
    asked through click's completion environment in one fresh process."""
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(lines)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_completion_offers_plugin_model_and_dataset_names() -> None:
    cosine, plugins, second, models, datasets, names, core, param = complete(
        ["run", "--plugin", "co"], ["run", "--plugin", ""], ["run", "--plugin", "cosine,dr"], ["run", "--model", "t"],
        ["run", "--dataset", "m"], ["plugins", "cr"], ["run", "--epo"], ["run", "--cosine.e"])
    assert cosine == ["cosine"] and second == ["cosine,dropout"]
    assert "dropout" in plugins and "mlp" not in plugins and "digits" not in plugins  # those go to --model/--dataset
    assert models == ["timm", "timm/", "torchvision", "torchvision/"] and datasets == ["mnist"]
    assert names == ["crop"] and "--epochs" in core and param == ["--cosine.eta_min"]


@pytest.mark.slow
def test_the_completion_script_and_a_real_completion_are_what_the_readme_says() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert 'eval "$(_HPPLUG_COMPLETE=bash_source hpplug)"' in readme
    proc = subprocess.run([sys.executable, "-m", "hpplug"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "_HPPLUG_COMPLETE": "bash_source"})
    assert proc.returncode == 0 and "_hpplug_completion()" in proc.stdout and "complete -o nosort" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "hpplug"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "_HPPLUG_COMPLETE": "bash_complete",
                               "COMP_WORDS": "hpplug run --plugin cos", "COMP_CWORD": "3"})
    assert (proc.returncode, proc.stdout) == (0, "plain,cosine\n"), proc.stderr


@pytest.mark.parametrize("argv", [["--version"], ["--help"], []])
def test_help_and_version_do_not_import_torch_accelerate_or_wandb(argv) -> None:
    """They answer at once: nothing heavy is imported until a command needs it (issue 13's fast start)."""
    probe = ("import sys\nfrom hpplug.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'accelerate', 'wandb') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "hpplug" in done.stdout and done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:]
