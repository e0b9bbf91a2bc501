"""Bad input: one line on stderr naming the problem and the fix, exit code 2, no run started."""

import subprocess
import sys

import pytest

CASES = [
    (["--plugin", "cosin"], "unknown plugin 'cosin'", "cosine"),
    (["--plugin", "cosine", "--cosine.eta_mn=0.1"], "unknown parameter --cosine.eta_mn", "--cosine.eta_min"),
    (["--plugin", "dropout", "--dropout.p=1.5"], "--dropout.p", "between"),
    (["--plugin", "cosine", "--cosine.t_max=abc"], "--cosine.t_max", "not an integer"),
    (["--dropout.p=0.2"], "not selected", "--plugin dropout"),
    (["--dataset", "imagenet"], "imagenet", "digits"),
    (["--epochs", "0"], "--epochs", ">=1"),
    (["--plugin", "step", "--plugin", "cosine"], "lr-schedule", "choose one"),
    (["--plugin=['cosine', 'dropout'", "--epochs", "1"], "not a list", "['cosine', 'dropout']"),
]


@pytest.mark.parametrize(("argv", "problem", "fix"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_with_exit_code_2(hpplug_cli, tmp_path, argv, problem, fix):
    code, out, err = hpplug_cli("run", *argv, "--output-dir", str(tmp_path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    assert problem in lines[0] and fix in lines[0]
    assert not list(tmp_path.iterdir()), "a rejected command must not start a run"


def test_missing_dataset_offline_says_where_to_put_the_files(hpplug_cli, tmp_path):
    code, _, err = hpplug_cli("run", "--dataset", "mnist", "--data-root", str(tmp_path / "data"),
                              "--wandb-mode", "disabled", "--output-dir", str(tmp_path / "runs"))
    assert code == 2
    (line,) = err.strip().splitlines()
    assert str(tmp_path / "data" / "MNIST" / "raw") in line
    assert "train-images-idx3-ubyte" in line


def test_console_script_prints_no_traceback(tmp_path):
    """The installed ``hpplug`` executable, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "hpplug", "run", "--plugin", "nope"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("Error: unknown plugin 'nope'")
