"""Settings that silently do nothing get one ``Warning: ...`` line on stderr, once, from the
main process: real runs through the command line, and ``hpplug.warn`` itself."""

from __future__ import annotations

from pathlib import Path

import pytest

import hpplug
from hpplug import notices

RUN = ["--epochs", "2", "--wandb-mode", "disabled", "--log-every", "5"]


def warnings_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("Warning: ")]


def train(hpplug_cli, tmp_path: Path, *argv: str) -> list[str]:
    code, _, err = hpplug_cli("run", *argv, *RUN, "--output-dir", str(tmp_path / "runs"))
    assert code == 0, err
    assert "Warning" not in "\n".join(line for line in err.splitlines() if not line.startswith("Warning: "))
    return warnings_of(err)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    notices.new_run()


def test_warn_prints_one_line_once(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        hpplug.warn("--x.y 3 does\n  nothing;   use 2")
    hpplug.warn("another")
    assert capsys.readouterr().err == "Warning: --x.y 3 does nothing; use 2\nWarning: another\n"
    notices.new_run()  # a new run in the same process says it again
    hpplug.warn("another")
    assert capsys.readouterr().err == "Warning: another\n"


def test_only_the_main_process_warns(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    hpplug.warn("from rank 1")
    monkeypatch.setenv("RANK", "0")
    hpplug.warn("from rank 0")
    assert capsys.readouterr().err == "Warning: from rank 0\n"


def test_a_crop_padding_of_half_the_image_side(hpplug_cli, tmp_path: Path) -> None:
    """digits images are 8x8: the default padding 4 leaves many crops mostly zeros."""
    (line,) = train(hpplug_cli, tmp_path, "--plugin", "crop")
    assert line.startswith("Warning: --crop.padding 4 is at least half the side of the 8x8 images")
    assert line.endswith("(--crop.padding 1)")
    assert train(hpplug_cli, tmp_path, "--plugin", "crop", "--crop.padding", "1") == []
    assert train(hpplug_cli, tmp_path, "--plugin", "crop", "--crop.padding", "3") == []


def test_a_step_size_the_run_never_reaches(hpplug_cli, tmp_path: Path) -> None:
    (line,) = train(hpplug_cli, tmp_path, "--plugin", "step")  # the default 30 over 2 epochs
    assert line == ("Warning: --step.step_size 30 is not smaller than the run's 2 epochs: the LR never decays; "
                    "set --step.step_size below 2")
    (line,) = train(hpplug_cli, tmp_path, "--plugin", "step", "--step.step_size", "2", "--step.interval", "update")
    assert "--step.step_size 2" in line
    assert train(hpplug_cli, tmp_path, "--plugin", "step", "--step.step_size", "1") == []


def test_lr_scaling_at_its_own_base_batch(hpplug_cli, tmp_path: Path) -> None:
    (line,) = train(hpplug_cli, tmp_path, "--plugin", "lr-scaling")
    assert line.startswith("Warning: --plugin lr-scaling does nothing: the global batch 64 (--batch-size 64 x 1 "
                           "process(es) x --grad-accum 1) equals --lr-scaling.base_batch 64")
    assert train(hpplug_cli, tmp_path, "--plugin", "lr-scaling", "--batch-size", "32") == []
    assert train(hpplug_cli, tmp_path, "--plugin", "lr-scaling", "--grad-accum", "2") == []


def test_every_run_in_a_process_warns_for_itself(hpplug_cli, tmp_path: Path) -> None:
    for _ in range(2):
        assert len(train(hpplug_cli, tmp_path, "--plugin", "crop", "--plugin", "step")) == 2
