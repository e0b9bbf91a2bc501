"""What a person sees while a run trains: a tqdm bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import Any

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
    """One epoch's progress: samples done and per second, loss and LR; a line when it ends."""

    def __init__(self, progress: Progress, samples_per_update: int = 1, enabled: bool = True,
                 stream: Any = None) -> None:
        self.progress = progress
        self.samples_per_update = samples_per_update
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.bar: tqdm | None = None

    def __enter__(self) -> EpochBar:
        p = self.progress
        if self.enabled and self.stream.isatty():
            self.bar = tqdm(total=p.updates_per_epoch, initial=p.update - p.epoch * p.updates_per_epoch,
                            desc=f"epoch {p.epoch + 1}/{p.epochs}", unit="sample", unit_scale=self.samples_per_update,
                            file=self.stream, leave=False, dynamic_ncols=True)
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **values: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def epoch_done(self, metrics: dict[str, Any]) -> None:
        if self.enabled:
            line = f"epoch {self.progress.epoch + 1}/{self.progress.epochs}  {format_metrics(metrics)}"
            (self.bar.write if self.bar is not None else print)(line, file=self.stream)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()
