"""What a run's checkpoint holds beyond the loop's own counters, and whether a saved state
fits the run before it is loaded: torch checks too little (a crafted optimizer state loads
and fails mid-run), and what is read back from disk is untrusted.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from hpplug.config import RunConfig


def config_problem(config: Any) -> str | None:
    """Why ``config`` cannot be a ``RunConfig``'s fields (``None`` when it can)."""
    if not isinstance(config, dict):
        return "is damaged: it holds no configuration"
    defaults = RunConfig()
    for key, value in config.items():
        if key not in RunConfig.field_names():
            return f"has an unknown setting {key!r}"
        default = getattr(defaults, key)
        if not (type(value) is type(default) or (type(default) is float and type(value) is int)
                or (default is None and (value is None or isinstance(value, str)))):
            return f"has {key}={value!r}, not a {type(default).__name__}"
    if not all(isinstance(p, str) for p in config.get("plugins", [])):
        return "has plugin names that are not strings"
    if not all(isinstance(v, dict) for v in config.get("plugin_params", {}).values()):
        return "has plugin parameters that are not a mapping per plugin"
    return None


def load_model(model: torch.nn.Module, weights: Any) -> None:
    expected = model.state_dict()
    if not isinstance(weights, dict) or weights.keys() != expected.keys():
        names = sorted(weights) if isinstance(weights, dict) else type(weights).__name__
        raise ValueError(f"it holds {str(names)[:120]}, the model {str(sorted(expected))[:120]}")
    for key, tensor in expected.items():
        w = weights[key]
        if not isinstance(w, torch.Tensor) or w.shape != tensor.shape or w.dtype != tensor.dtype:
            there = f"{tuple(w.shape)} {w.dtype}" if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{key} is {there} there and {tuple(tensor.shape)} {tensor.dtype} in this run's model")
    model.load_state_dict(weights)


def load_optimizer(optimizer: torch.optim.Optimizer, state: Any) -> None:
    """Check what torch does not (a crafted state would fail later, mid-run) and load."""
    now = optimizer.state_dict()
    if not isinstance(state, dict) or set(state) != {"state", "param_groups"} or not isinstance(state["state"], dict):
        raise ValueError("it is not an optimizer's state")
    groups = state["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(now["param_groups"]):
        raise ValueError(f"its parameter groups are not the {len(now['param_groups'])} of this run's optimizer")
    for group, current in zip(groups, now["param_groups"]):
        if not isinstance(group, dict) or not set(group) <= set(current) or group.get("params") != current["params"]:
            raise ValueError("its parameter groups are not this run's optimizer's")
        for key, value in group.items():
            if not _alike(value, current[key]):
                raise ValueError(f"parameter group setting {key}={str(value)[:40]} is not like {current[key]!r}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for index, values in state["state"].items():
        if not (type(index) is int and 0 <= index < len(params)) or not isinstance(values, dict):
            raise ValueError(f"it holds state for a parameter {index!r} this run's optimizer does not have")
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[index].shape:
                raise ValueError(f"{key} of parameter {index} is {tuple(value.shape)}, the parameter "
                                 f"{tuple(params[index].shape)}")
    optimizer.load_state_dict(state)


def _alike(value: Any, current: Any) -> bool:
    if isinstance(current, (list, tuple)):
        return (type(value) is type(current) and len(value) == len(current)
                and all(_alike(v, c) for v, c in zip(value, current)))
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type(value) is type(current)


def rng_state() -> dict[str, Any]:
    """This process's generators: what ``accelerate.utils.set_seed`` seeds."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "cached": cached}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng(state: dict[str, Any]) -> None:
    n = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if not isinstance(state["torch"], torch.Tensor) or state["torch"].dtype != torch.uint8:
        raise ValueError("torch's generator state is not a byte tensor")
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
