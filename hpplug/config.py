"""One resolved run configuration: defaults < command line < ``wandb.config`` in a sweep.

Also the value types of its options. Every place a value arrives (command line, a sweep's
``wandb.config``, a sweep YAML, a plugin's ``hpplug_adjust_config``) converts it with the
same type, so a value refused in one is refused in all.
"""

from __future__ import annotations

import ast
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import click

from hpplug.errors import HpplugError

OPTIMIZERS = ("sgd", "adam", "adamw")
LOADERS = ("auto", "memory", "stream")
PRECISIONS = ("no", "bf16", "fp16")
WANDB_MODES = ("online", "offline", "disabled")

INT64_MAX = 2**63 - 1  # the largest integer torch and W&B store
SEED_MAX = 2**32 - 1  # numpy's seed (accelerate's set_seed seeds numpy too)
# W&B refuses these in a project name, and names longer than this (wandb_settings.validate_project).
WANDB_FORBIDDEN = "/\\#?%:"
WANDB_NAME_MAX = 128
WANDB_TAG_MAX = 64  # W&B's limit on one tag (wandb_settings.validate_run_tags)


class Number(click.FloatRange):
    """A float range that refuses NaN and infinity: every comparison with NaN is False, so a
    plain ``FloatRange`` lets it through (and ``1e400`` is infinity)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):  # a W&B config's list
            self.fail(f"{value!r} is not a number", param, ctx)
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class Count(click.IntRange):
    """An integer range that refuses fractions and infinity (a W&B config may hold floats:
    click's ``INT`` truncates 64.5 and crashes on inf) and integers torch and W&B cannot store."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        fraction = isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) \
            and not float(value).is_integer()
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)) or fraction:
            self.fail(f"{value!r} is not an integer", param, ctx)
        number = super().convert(value, param, ctx)
        if abs(number) > INT64_MAX:
            self.fail(f"{number} is too large: torch and W&B store integers up to 2**63 - 1", param, ctx)
        return number


class WandbName(click.ParamType):
    """A name W&B accepts: its own rules (no ``/ \\ # ? % :``, at most 128 characters), not
    empty and printable, checked before any run starts instead of failing inside ``wandb.init``.
    A run's display name and group take any printable text (``forbidden=""``)."""

    name = "text"

    def __init__(self, forbidden: str = WANDB_FORBIDDEN, limit: int | None = WANDB_NAME_MAX,
                 what: str = "name") -> None:
        self.forbidden, self.limit, self.what = forbidden, limit, what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        found = sorted(set(self.forbidden) & set(text))
        if not text.strip():
            self.fail(f"a W&B {self.what} must not be empty", param, ctx)
        elif found:
            self.fail(f"{text!r}: W&B {self.what}s cannot contain {' '.join(found)} "
                      f"(forbidden: {' '.join(self.forbidden)})", param, ctx)
        elif self.limit is not None and len(text) > self.limit:
            self.fail(f"{text[:40]!r}... is {len(text)} characters; W&B allows at most {self.limit}",
                      param, ctx)
        elif not text.isprintable():
            self.fail(f"{text!r} holds control characters; use printable characters", param, ctx)
        return text


class Tags(click.ParamType):
    """W&B tags, kept as one comma-separated text (``a,b``): what ``--tags`` and ``WANDB_TAGS``
    take, and what a record's config holds. Also takes a list (a YAML or W&B config) and the
    form ``wandb agent`` writes (``['a', 'b']``). Each tag is 1 to 64 printable characters."""

    name = "tags"
    one = WandbName(forbidden=",", limit=WANDB_TAG_MAX, what="tag")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                self.fail(f"{value!r} is not a list such as ['a', 'b']", param, ctx)
        items = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).split(",")
        if items == [""]:  # --tags "": no tags, whatever WANDB_TAGS says
            return ""
        return ",".join(self.one.convert(item.strip(), param, ctx) for item in items)


def tag_list(tags: str | None) -> list[str]:
    """The tags of a config's ``tags`` text, for W&B."""
    return tags.split(",") if tags else []


class Folder(click.ParamType):
    """A folder to read from or write into, created when missing: refused when it, or a folder
    above it, is a file, or (``writable``) when the folder it would be made in is not writable."""

    name = "directory"

    def __init__(self, writable: bool = False) -> None:
        self.writable = writable

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if not text:
            self.fail("an empty path; name a folder", param, ctx)
        if "\0" in text:
            self.fail(f"{text!r} contains a NUL character", param, ctx)
        path = Path(text)
        for existing in (path, *path.parents):
            try:
                if not existing.exists():
                    continue
            except OSError as exc:
                self.fail(f"{text}: {exc.strerror}", param, ctx)
            if not existing.is_dir():
                within = "" if existing == path else f", so {text} cannot be a folder"
                self.fail(f"{existing} is a file, not a folder{within}", param, ctx)
            if self.writable and not os.access(existing, os.W_OK | os.X_OK):
                self.fail(f"{text}: cannot write in {existing} (permission denied)", param, ctx)
            break
        return text


@dataclass
class RunConfig:
    """Every option of a run: its hyperparameters and its settings (``SETTINGS``); the
    defaults reproduce the seed article."""

    plugins: list[str] = field(default_factory=list)
    plugin_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset: str = "digits"
    data_root: str = "data"
    val_fraction: float = 0.1
    model: str = "mlp"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.0
    seed: int = 0
    mixed_precision: str = "no"
    grad_accum: int = 1
    wandb_mode: str | None = None
    project: str | None = None  # None: WANDB_PROJECT, else DEFAULT_PROJECT (with_environment)
    output_dir: str = "runs"
    log_every: int = 50
    checkpoint_every: str | None = None
    eval_batch_size: int = 1000
    loader: str = "auto"
    workers: int = 2
    entity: str | None = None
    name: str | None = None
    tags: str | None = None  # comma-separated (Tags)
    group: str | None = None
    notes: str | None = None
    # Filled in by the engine before ``hpplug_adjust_config`` fires.
    num_processes: int = 1

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer update across all processes: what LR-scaling rules see."""
        return self.batch_size * self.num_processes * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def flat(self) -> dict[str, Any]:
        """Hyperparameters as W&B config keys: core fields plus ``<plugin>.<param>``."""
        out = {k: v for k, v in self.to_dict().items() if k != "plugin_params"}
        for plugin, values in self.plugin_params.items():
            for name, value in values.items():
                out[f"{plugin}.{name}"] = value
        return out


# (field, click type, help) for every core option of `hpplug run`: the one definition the
# command line, a sweep's W&B config and sweep YAML checks all convert values with.
OPTIONS: list[tuple[str, click.ParamType, str]] = [
    ("dataset", click.STRING, "Data set: a data-set plugin's name (digits is bundled and needs no network), "
                              "or MODULE:ATTR for your own code. See `hpplug plugins`."),
    ("data_root", Folder(), "Folder datasets are read from and downloaded to (HPPLUG_OFFLINE=1: never download)."),
    ("val_fraction", Number(0, 1, max_open=True), "Share of the training set held out for validation when the "
                                                  "data set has no validation split (fixed and seeded; 0: none)."),
    ("model", click.STRING, "Model: a model plugin's name (mlp, cnn), a zoo's NAME/ARCH (torchvision/resnet18, "
                            "timm/resnet18), or MODULE:ATTR for your own nn.Module."),
    ("epochs", Count(1), "Epochs to train."),
    ("batch_size", Count(1), "Samples per process per micro-batch."),
    ("lr", Number(0, min_open=True), "Base learning rate (before LR plugins)."),
    ("optimizer", click.Choice(OPTIMIZERS), "Optimizer."),
    ("momentum", Number(0, 1, max_open=True), "SGD momentum."),
    ("seed", Count(0, SEED_MAX), "Random seed: weights, sample order and augmentation draws."),
    ("mixed_precision", click.Choice(PRECISIONS), "Autocast precision; fp16 needs a CUDA GPU."),
    ("grad_accum", Count(1), "Micro-batches per optimizer update."),
    ("wandb_mode", click.Choice(WANDB_MODES), "W&B mode [default: online with credentials, else offline]."),
    ("project", WandbName(), "W&B project [default: WANDB_PROJECT, else hpplug]."),
    ("output_dir", Folder(writable=True), "Where run records (and offline W&B runs) are written."),
    ("log_every", Count(1), "Log train loss and LR every N updates."),
    ("checkpoint_every", click.STRING, "Checkpoint every N updates (200, 200updates) or epochs (1epoch)."),
    ("eval_batch_size", Count(1), "Batch size for evaluation."),
    ("loader", click.Choice(LOADERS), "Hold the data in memory (fast) or stream it through a DataLoader; auto: "
                                      "memory when it fits in a quarter of the free memory."),
    ("workers", Count(0, 64), "DataLoader worker processes when streaming (and reading a data set once)."),
    ("entity", WandbName(), "W&B entity (user or team) [default: WANDB_ENTITY, else W&B's default]."),
    ("name", WandbName(forbidden="", limit=None), "W&B run name [default: WANDB_NAME, else W&B picks one]."),
    ("tags", Tags(), "W&B tags, comma-separated (a,b) [default: WANDB_TAGS]."),
    ("group", WandbName(forbidden="", limit=None, what="group"),
     "W&B group of runs [default: WANDB_RUN_GROUP; a sweep's trials: the sweep id]."),
    ("notes", click.STRING, "W&B notes: a description of the run [default: WANDB_NOTES]."),
]
OPTION_TYPES = {name: ctype for name, ctype, _ in OPTIONS}

# Where and how a run is done, not what it trains: recorded with the run, never tuned as
# hyperparameters. W&B shows them apart, under "settings" (hpplug.wandb_run.wandb_view);
# they keep their flat names everywhere else (the command line, a sweep, config.json).
SETTINGS = ("data_root", "output_dir", "log_every", "checkpoint_every", "eval_batch_size", "loader", "workers",
            "wandb_mode", "project", "entity", "name", "tags", "group", "notes")

# The W&B variable each option that names a run falls back to, as wandb.init reads them:
# the command line wins over the variable, the variable over the default.
WANDB_VARIABLES = {"project": "WANDB_PROJECT", "entity": "WANDB_ENTITY", "name": "WANDB_NAME",
                   "tags": "WANDB_TAGS", "group": "WANDB_RUN_GROUP", "notes": "WANDB_NOTES"}
DEFAULT_PROJECT = "hpplug"


def with_environment(config: RunConfig, environ: Mapping[str, str]) -> RunConfig:
    """Fill the W&B options not given from W&B's variables (checked with the option's own
    type), and the project's default. Done once per run, so its record holds what it used."""
    for key, variable in WANDB_VARIABLES.items():
        if getattr(config, key) is None and environ.get(variable):
            try:
                setattr(config, key, OPTION_TYPES[key].convert(environ[variable], None, None))
            except click.BadParameter as exc:
                raise HpplugError(f"environment variable {variable}={environ[variable][:80]!r}: {exc.message}; "
                                  f"correct or unset it (or give --{key})") from None
    if config.project is None:
        config.project = DEFAULT_PROJECT
    return config


# Where each core option appears in `hpplug run --help` and in `--print-config` output, in
# this order. Kept apart from OPTIONS (which others append to): an option missing here falls
# into OTHER_GROUP, so it is still shown.
OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "Data": ("dataset", "data_root", "val_fraction", "loader", "workers"),
    "Model": ("model",),
    "Optimization": ("epochs", "batch_size", "lr", "optimizer", "momentum", "seed"),
    "Precision & scale": ("mixed_precision", "grad_accum", "eval_batch_size"),
    "Tracking & output": ("wandb_mode", "project", "entity", "name", "tags", "group", "notes", "output_dir", "log_every",
                          "checkpoint_every"),
}
OTHER_GROUP = "Other"


def option_groups() -> dict[str, list[str]]:
    """Every core option by group, in OPTION_GROUPS's order; options it does not name go last."""
    names = [name for name, _, _ in OPTIONS]
    groups = {title: [n for n in members if n in OPTION_TYPES] for title, members in OPTION_GROUPS.items()}
    placed = {n for members in groups.values() for n in members}
    groups[OTHER_GROUP] = [n for n in names if n not in placed]
    return {title: members for title, members in groups.items() if members}
