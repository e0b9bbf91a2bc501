"""``hpplug sweep --template``: a starting sweep YAML from the plugins' declared parameters.

Each plugin parameter becomes a search block around its default (log-uniform for positive
floats without a tight upper bound, uniform inside declared bounds, int_uniform for ints,
the choices for choices), with its help text as a comment; grid templates get value lists.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from hpplug.sweep.spec import EXAMPLE_COMMAND


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def _param_block(param: Any, method: str) -> dict[str, Any] | None:
    """A search block for one declared plugin parameter, around its default; None: leave out.

    Grid templates fix numeric parameters at their default (a grid over all of them would
    be enormous): turn ``value`` into ``values: [...]`` for the ones to search.
    """
    d, lo, hi = param.default, param.min, param.max
    if param.choices is not None:
        return {"values": list(param.choices)}
    if param.type is bool:
        return {"values": [True, False]}
    if d is None or method == "grid" or param.type not in (int, float) or d == 0:
        return None if d is None else {"value": list(d) if isinstance(d, tuple) else d}
    if param.type is int:
        low = int(max(lo if lo is not None else -math.inf, d // 2))
        high = int(min(hi if hi is not None else math.inf, max(d * 2, d + 1)))
        return {"distribution": "int_uniform", "min": low, "max": high} if low < high else {"value": d}
    if lo is not None and hi is not None:  # declared bounds: uniform around the default
        span = (hi - lo) / 4
        low, high = _round(max(lo, d - span)), _round(min(hi, d + span))
        return {"distribution": "uniform", "min": low, "max": high} if low < high else {"value": d}
    if d > 0 and (lo is None or lo >= 0):  # a positive scale: log-uniform over two decades
        return {"distribution": "log_uniform_values", "min": _round(max(lo or 0.0, d / 10)),
                "max": _round(d * 10)}
    return {"value": d}


def template(catalog: dict[str, Any], plugins: list[str], method: str = "bayes") -> str:
    """A starting sweep YAML from the plugins' declared parameters, with each one's help."""
    from hpplug import manager

    entries = manager.resolve(catalog, plugins)
    from hpplug.config import RunConfig

    d = RunConfig()
    lr = ({"values": [_round(d.lr / 10), d.lr, _round(d.lr * 3)]} if method == "grid" else
          {"distribution": "log_uniform_values", "min": _round(d.lr / 10), "max": _round(d.lr * 10)})
    blocks: list[tuple[str, dict[str, Any], str]] = [
        ("lr", lr, "base learning rate"),
        ("batch_size", {"values": [32, 64, 128]}, "samples per process per micro-batch"),
        ("epochs", {"value": d.epochs}, "epochs per trial"),
    ]
    if plugins:
        blocks.append(("plugin", {"value": list(plugins)}, "plugins of every trial; "
                       "a choice: values: [[step, dropout], [cosine, dropout]]"))
    for entry in entries:
        for key, param in entry.params.items():
            block = _param_block(param, method)
            note = f"{param.help} ({param.describe_range()}; default {param.default})"
            if block is None:
                blocks.append((f"# {entry.name}.{key}", {}, note + " - left at its default"))
            else:
                blocks.append((f"{entry.name}.{key}", block, note))
    # Tune on the validation set; the test set measures the chosen setting once (README).
    head = {"method": method, "metric": {"name": "val/accuracy", "goal": "maximize"}}
    if method == "bayes":
        head["run_cap"] = 20
    lines = [f"# Sweep template for plugins: {', '.join(plugins) or 'none'}. Run it with",
             "#   hpplug sweep THIS.yaml            (on this machine, W&B offline without credentials)",
             "#   wandb sweep THIS.yaml && wandb agent ENTITY/PROJECT/SWEEP_ID",
             yaml.safe_dump(head, sort_keys=False).rstrip(),
             EXAMPLE_COMMAND,
             "parameters:"]
    for name, block, note in blocks:
        lines.append(f"  # {note}")
        if name.startswith("#"):
            lines.append(f"  {name}")
            continue
        body = yaml.safe_dump({name: block}, sort_keys=False, default_flow_style=None).rstrip()
        lines += ["  " + line for line in body.splitlines()]
    return "\n".join(lines) + "\n"
