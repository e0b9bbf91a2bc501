"""What a person sees while a run trains: a tqdm bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import Any, Callable

from tqdm import tqdm

from hpplug.plugin import Progress

SHOWN = ("train/loss", "val/loss", "val/accuracy", "lr", "train/samples_per_s")


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key in SHOWN:
        if key in metrics:
            value = metrics[key]
            parts.append(f"{key} {value:,.0f}" if key.endswith("_per_s") else f"{key} {value:.4g}")
    return "  ".join(parts)


class EpochBar:
    """One epoch's progress: samples done and per second, loss and LR; a line when it ends.

    Loss and LR stay in the bar for the whole epoch at a fixed width: the loop reports them
    every ``--log-every`` updates, and until the first report of an epoch the bar shows the
    last values known (the previous epoch's, carried by :meth:`factory`), or dashes.
    """

    def __init__(self, progress: Progress, samples_per_update: int = 1, enabled: bool = True,
                 stream: Any = None, shown: dict[str, float] | None = None) -> None:
        self.progress = progress
        self.samples_per_update = samples_per_update
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.shown = {} if shown is None else shown  # the last loss and LR, shared between epochs
        self.bar: tqdm | None = None

    @classmethod
    def factory(cls, samples_per_update: int = 1, enabled: bool = True,
                stream: Any = None) -> Callable[[Progress], EpochBar]:
        """A bar per epoch, each starting with the loss and LR the previous one ended with."""
        shown: dict[str, float] = {}
        return lambda progress: cls(progress, samples_per_update, enabled, stream, shown)

    def __enter__(self) -> EpochBar:
        p = self.progress
        if self.enabled and self.stream.isatty():
            per = self.samples_per_update  # counted in samples: 1.34k/1.34k, 10.5ksample/s
            self.bar = tqdm(total=p.updates_per_epoch * per, initial=(p.update - p.epoch * p.updates_per_epoch) * per,
                            desc=f"epoch {p.epoch + 1}/{p.epochs}", unit="sample", unit_scale=True,
                            file=self.stream, leave=False, dynamic_ncols=True, postfix=self.postfix())
        return self

    def postfix(self) -> str:
        """``loss 0.1234  lr 0.1`` at a fixed width, dashes for a value not known yet."""
        loss, lr = self.shown.get("loss"), self.shown.get("lr")
        loss_text = "-" if loss is None else f"{loss:.4f}"
        lr_text = "-" if lr is None else f"{lr:.3g}"
        return f"loss {loss_text:<7}  lr {lr_text:<8}"

    def update(self, n: int) -> None:
        """``n`` more updates done."""
        if self.bar is not None:
            self.bar.update(n * self.samples_per_update)

    def set_postfix(self, **values: str | float) -> None:
        """The loop's latest ``loss`` and ``lr`` (numbers or their text)."""
        for key in ("loss", "lr"):
            if key in values:
                self.shown[key] = float(values[key])
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=True)

    def epoch_done(self, metrics: dict[str, Any]) -> None:
        for key, name in (("loss", "train/loss"), ("lr", "lr")):
            if isinstance(metrics.get(name), (int, float)):
                self.shown[key] = float(metrics[name])
        if self.enabled:
            line = f"epoch {self.progress.epoch + 1}/{self.progress.epochs}  {format_metrics(metrics)}"
            (self.bar.write if self.bar is not None else print)(line, file=self.stream)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()
