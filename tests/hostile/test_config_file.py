"""Hostile ``--config`` files: every one refused in one line naming the file and the key,
exit 2, nothing run, nothing written; YAML never constructs objects or runs code."""

from __future__ import annotations

from pathlib import Path

import pytest

LONG = "x" * 5000
# (file content, what the one line must say)
CASES = {
    "not_yaml": ("epochs: [3\n", ["not valid YAML at line 2"]),
    "tab_indent": ("cosine:\n\teta_min: 0.1\n", ["not valid YAML"]),
    "a_list": ("- epochs\n- 3\n", ["holds a list of 2 items", "expected a mapping"]),
    "a_scalar": ("just text\n", ["holds a str", "expected a mapping"]),
    "unknown_key": ("epoch: 3\n", ["unknown key 'epoch'", "did you mean epochs?"]),
    "unknown_plugin_section": ("cosin:\n  eta_min: 0.1\n", ["unknown key 'cosin'", "did you mean cosine?"]),
    "unknown_plugin_flat": ("cosin.eta_min: 0.1\n", ["unknown key 'cosin'", "did you mean cosine?"]),
    "unknown_param": ("plugins: [cosine]\ncosine: {eta-min: 0.1}\n", ["cosine.eta-min: unknown parameter",
                                                                    "did you mean eta_min?"]),
    "unknown_in_plugins": ("plugins: [cosine, dropuot]\n", ["plugins: unknown plugin 'dropuot'",
                                                            "did you mean dropout?"]),
    "plugins_not_a_list": ("plugins: {cosine: 1}\n", ["plugins: a mapping of 1 items", "list of plugin names"]),
    "epochs_text": ("epochs: three\n", ["epochs: 'three' is not a valid integer"]),
    "epochs_fraction": ("epochs: 1.5\n", ["epochs: 1.5 is not an integer"]),
    "epochs_bool": ("epochs: true\n", ["epochs: True is not an integer"]),
    "epochs_zero": ("epochs: 0\n", ["epochs: 0 is not in the range x>=1"]),
    "epochs_empty": ("epochs:\n", ["epochs: empty; give a value (type: integer) or leave the key out"]),
    "lr_list": ("lr: [0.1, 0.2]\n", ["lr: a list of 2 items; expected a single value"]),
    "lr_nan": ("lr: .nan\n", ["lr: nan is not a finite number"]),
    "bad_choice": ("optimizer: lbfgs\n", ["optimizer: 'lbfgs' is not one of"]),
    "param_range": ("plugins: [dropout]\ndropout: {p: 1.5}\n", ["dropout.p: 1.5 is out of range"]),
    "param_type": ("plugins: [cosine]\ncosine.t_max: soon\n", ["cosine.t_max: 'soon' is not an integer"]),
    "param_mapping": ("plugins: [dropout]\ndropout: {p: {a: 1}}\n", ["dropout.p: a mapping of 1 items"]),
    "section_not_selected": ("dropout: {p: 0.3}\n", ["dropout: parameters of plugin dropout, which the file "
                                                     "does not select"]),
    "model_section_not_selected": ("cnn: {width: 8}\n", ["cnn: parameters of plugin cnn"]),
    "non_string_key": ("1: 2\n", ["the key 1 is not a name"]),
    "long_value": (f"project: {LONG}\n", ["project: a 5000-character text"]),
    "python_object": ("epochs: !!python/object/apply:os.system ['touch pwned']\n", ["not valid YAML",
                                                                                    "could not determine a constructor"]),
    "alias_bomb": ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                   "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                   "lr: *f\n", ["unknown key 'a'"]),
    "alias_bomb_value": ("lr: &a [[[[[[1]]]]]]\n", ["lr: a list of 1 items; expected a single value"]),
    "deep_nesting": ("lr: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"]),
    "truncated_json": ('{"epochs": 1, "plugins": ["cosine"\n', ["not valid YAML"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_config_file_is_one_line_naming_the_file_and_key(refused, sandbox, name: str) -> None:
    content, said = CASES[name]
    path = sandbox.root.parent / f"{name}.yaml"  # beside the sandbox: the harness checks the sandbox itself
    sandbox._outside.add(path.name)
    path.write_text(content)
    line = refused("run", "--config", str(path), "--epochs", "1").line
    assert line.startswith(f"Error: --config {path}: "), line
    for words in said:
        assert words in line, line
    assert len(line) < 400, line
    assert not (sandbox.root / "pwned").exists() and not Path("pwned").exists()


def test_files_that_are_not_a_configuration(refused, sandbox) -> None:
    outside = sandbox.root.parent
    sandbox._outside |= {"big.yaml", "binary.yaml", "folder"}
    (outside / "big.yaml").write_text("# padding\n" * 120_000)
    (outside / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (outside / "folder").mkdir()
    cases = {"big.yaml": "larger than 1024 KiB", "binary.yaml": "not a text file (not UTF-8)",
             "folder": "a folder without config.json", "missing.yaml": "no such file"}
    for name, said in cases.items():
        line = refused("run", "--config", str(outside / name)).line
        assert line == f"Error: --config {outside / name}: {line.split(': ', 2)[2]}" and said in line, line


def test_config_and_resume_together_are_refused(refused, sandbox) -> None:
    path = sandbox.root.parent / "ok.yaml"
    sandbox._outside.add(path.name)
    path.write_text("epochs: 1\n")
    line = refused("run", "--config", str(path), "--resume", str(sandbox.earlier)).line
    assert "--config and --resume" in line and "give one of them" in line


def test_a_record_whose_config_json_was_tampered_with(refused, sandbox) -> None:
    """A run record is untrusted: its config.json, edited to hold a key of no option, is refused."""
    import json

    copy = sandbox.root.parent / "tampered"
    sandbox._outside.add(copy.name)
    copy.mkdir()
    data = json.loads((sandbox.earlier / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**data, "__class__": "os.system"}))
    line = refused("run", "--config", str(copy)).line
    assert "unknown key '__class__'" in line
