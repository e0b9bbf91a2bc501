"""The progress bar keeps loss and LR in view, at one width, for the whole of every epoch:
frames read back from a terminal stand-in and from a real run in a pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
from dataclasses import replace
import termios
from pathlib import Path

import pytest

from hpplug.console import EpochBar
from hpplug.plugin import Progress

POSTFIX = re.compile(r"loss (\S+) +lr (\S+) +\]$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def frames(text: str) -> list[str]:
    """Every bar drawn (between carriage returns), blank erasures left out."""
    return [part for part in re.split(r"[\r\n]", text) if re.match(r"epoch \d+/\d+: ", part)]


def postfix(frame: str) -> tuple[str, str, int]:
    """(loss, lr, width of the loss-and-LR part) of one frame."""
    found = POSTFIX.search(frame)
    assert found, frame
    return found[1], found[2], len(found[0])


def test_loss_and_lr_stay_in_the_bar_between_log_points_and_across_epochs() -> None:
    screen = Terminal()
    make = EpochBar.factory(64, stream=screen)
    progress = Progress(update=0, epoch=0, updates_per_epoch=6, epochs=2)
    for epoch in range(2):  # the bar gets the (frozen) progress of its epoch's start, as from the loop
        with make(replace(progress, epoch=epoch, update=6 * epoch)) as bar:
            for u in range(6):
                bar.update(1)
                if u in (2, 5):  # the loop reports at its log points only
                    bar.set_postfix(loss=f"{1.5 - epoch - u / 10:.4f}", lr=f"{0.1 / (epoch + 1):.3g}")
            bar.epoch_done({"train/loss": 1.25 - epoch, "lr": 0.1 / (epoch + 1), "val/accuracy": 0.5})
    drawn = [postfix(frame) + (frame[:9],) for frame in frames(screen.getvalue())]
    assert len({width for _, _, width, _ in drawn}) == 1, drawn  # one width: nothing jumps
    first = [d for d in drawn if d[3] == "epoch 1/2"]
    second = [d for d in drawn if d[3] == "epoch 2/2"]
    assert first[0][:2] == ("-", "-")  # nothing known yet: dashes hold the place
    assert ("1.3000", "0.1") in [d[:2] for d in first]
    assert second[0][:2] == ("1.2500", "0.1")  # the new epoch starts with the last epoch's values
    assert all(d[:2] != ("-", "-") for d in second)
    assert "epoch 1/2  train/loss 1.25  val/accuracy 0.5  lr 0.1\n" in screen.getvalue()


def test_no_terminal_no_bar_only_the_epoch_lines() -> None:
    stream = io.StringIO()
    progress = Progress(update=0, epoch=0, updates_per_epoch=2, epochs=1)
    with EpochBar.factory(8, stream=stream)(progress) as bar:
        bar.update(2)
        bar.set_postfix(loss="0.5", lr="0.1")
        bar.epoch_done({"train/loss": 0.5, "lr": 0.1})
    assert stream.getvalue() == "epoch 1/1  train/loss 0.5  lr 0.1\n"


@pytest.mark.slow
def test_a_real_run_in_a_terminal_shows_loss_and_lr_throughout(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "hpplug", "run", "--epochs", "3", "--log-every", "7",
                             "--wandb-mode", "disabled", "--output-dir", str(tmp_path)],
                            stdin=terminal, stdout=terminal, stderr=terminal, cwd=tmp_path)
    os.close(terminal)
    out = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the run ended and closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=300) == 0
    os.close(controller)
    text = out.decode("utf-8", "replace")
    drawn = frames(text)
    assert drawn, text
    shown = [postfix(frame) for frame in drawn]
    assert len({width for _, _, width in shown}) == 1, drawn
    later = [s for frame, s in zip(drawn, shown) if not frame.startswith("epoch 1/3:")]
    assert later and all(loss != "-" and lr == "0.1" for loss, lr, _ in later)  # epochs 2 and 3: always values
    assert re.search(r"epoch 3/3  train/loss [\d.]+ +val/loss", text)


def test_a_run_opens_with_one_line_saying_what_trains_how(hpplug_cli, tmp_path: Path) -> None:
    """The first seconds are not a blank screen: run id, model, data set, plugins, optimizer,
    LR, batch, epochs and W&B mode, before the first epoch's line."""
    code, out, err = hpplug_cli("run", "--plugin", "cosine", "--plugin", "dropout", "--lr", "0.05", "--batch-size", "32",
                                "--epochs", "1", "--wandb-mode", "disabled", "--output-dir", str(tmp_path))
    assert code == 0, err
    (record,) = tmp_path.iterdir()
    assert out.splitlines()[0] == (f"run {record.name}: mlp on digits, plugins cosine, dropout; sgd lr 0.05, batch 32, "
                                   "1 epoch; W&B disabled")
