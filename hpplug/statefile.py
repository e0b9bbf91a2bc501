"""A nested state (dicts, lists, tuples, JSON values and tensors) on disk as ``NAME.json`` +
``NAME.safetensors``, read back without running any code: no pickle, unlike ``torch.save``
and Accelerate's ``save_state``, whose files execute whatever they were crafted to.

The JSON keeps the structure and the plain values; each tensor in it is a
``{"$tensor": key}`` marker for an entry of the safetensors file. Tuples, integer-keyed
dicts (an optimizer's ``state``) and dicts that could be mistaken for a marker are wrapped
in markers too, so a state reads back exactly as it was saved.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from hpplug.atomic import write_durable

TENSOR, TUPLE, INT_KEYS, DICT = "$tensor", "$tuple", "$int-keys", "$dict"
SUFFIXES = (".json", ".safetensors")


class StateFileError(ValueError):
    """Bytes that are not a state of this format (damaged or crafted)."""


def encode(state: Any) -> tuple[bytes, bytes]:
    """The JSON and safetensors bytes of ``state``.

    Raises ``TypeError`` naming where in ``state`` a value of another type sits.
    """
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()

    def tensor(value: torch.Tensor, path: str) -> dict[str, str]:
        t = value.detach().to("cpu")
        if not t.is_contiguous():
            t = t.contiguous()
        elif t.untyped_storage().data_ptr() in storages:
            t = t.clone()  # safetensors refuses tensors that share memory
        if t.untyped_storage().data_ptr():
            storages.add(t.untyped_storage().data_ptr())
        key, n = path or "tensor", 1
        while key in tensors:
            key, n = f"{path}#{n}", n + 1
        tensors[key] = t
        return {TENSOR: key}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            return tensor(value, path)
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            keys = list(value)
            if keys and all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
                return {INT_KEYS: {str(k): walk(v, f"{path}/{k}") for k, v in value.items()}}
            if not all(isinstance(k, str) for k in keys):
                raise TypeError(f"{path or 'the state'} is a dict whose keys are not all strings or all integers")
            out = {k: walk(v, f"{path}/{k}" if path else k) for k, v in value.items()}
            return {DICT: out} if len(out) == 1 and keys[0].startswith("$") else out
        raise TypeError(f"{path or 'the state'} is a {type(value).__name__}; a state holds only tensors, "
                        "numbers, strings, None, lists, tuples and dicts")

    doc = walk(state, "")
    return json.dumps(doc, indent=1).encode(), save_tensors(tensors)


def decode(json_bytes: bytes, tensor_bytes: bytes) -> Any:
    """The state :func:`encode` made; ``StateFileError`` when the bytes are not one."""
    try:
        doc = json.loads(json_bytes)
    except (ValueError, RecursionError) as exc:
        raise StateFileError(f"not valid JSON ({exc})") from None
    try:
        tensors = load_tensors(tensor_bytes)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise StateFileError(f"not a safetensors file ({exc})") from None
    used: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1 and next(iter(node)).startswith("$"):
            ((marker, inner),) = node.items()
            if marker == TENSOR and isinstance(inner, str) and inner in tensors:
                used.add(inner)
                return tensors[inner]
            if marker == TUPLE and isinstance(inner, list):
                return tuple(walk(v) for v in inner)
            if marker == INT_KEYS and isinstance(inner, dict):
                try:
                    return {int(k): walk(v) for k, v in inner.items()}
                except ValueError:
                    raise StateFileError(f"{marker} holds a key that is not an integer") from None
            if marker == DICT and isinstance(inner, dict):
                return {k: walk(v) for k, v in inner.items()}
            raise StateFileError(f"bad {marker!r} entry {str(inner)[:60]!r}")
        return {k: walk(v) for k, v in node.items()}

    try:
        state = walk(doc)
    except RecursionError:
        raise StateFileError("nested too deeply") from None
    if set(tensors) - used:
        raise StateFileError(f"holds tensors its JSON does not name: {sorted(set(tensors) - used)[:3]}")
    return state


def write(folder: Path, name: str, state: Any) -> None:
    """``folder/NAME.json`` and ``folder/NAME.safetensors``, each on disk when this returns."""
    for suffix, data in zip(SUFFIXES, encode(state)):
        write_durable(folder / (name + suffix), data)


def read(folder: Path, name: str) -> Any:
    """What :func:`write` wrote; never unpickles, so a crafted file cannot run code."""
    return decode(*((folder / (name + suffix)).read_bytes() for suffix in SUFFIXES))

