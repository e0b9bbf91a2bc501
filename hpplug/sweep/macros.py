"""The argv ``wandb agent`` runs for a trial: its command with W&B's macros filled in.

``wandb agent`` renders a command with ``create_sweep_command`` (``${envvar:NAME}``) and
``create_sweep_command_args`` (``${args}`` and its seven other formats) from
``wandb.sdk.launch.sweeps.utils``, then substitutes the macros as
``wandb_agent.Agent._command_run`` does. Importing that module imports W&B's whole launch
package (~0.5 s of a sweep runner that imports no W&B otherwise), so the two functions are
restated here, line for line; tests/test_sweep_spec.py checks every format against W&B's
own for many kinds of values, so a change in W&B shows up as a failing test.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

ENVVAR = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")  # wandb.sdk.launch.sweeps.utils.SWEEP_COMMAND_ENV_VAR_REGEX


def with_envvars(command: list[str]) -> list[str]:
    """``${envvar:NAME}`` replaced by ``$NAME`` (left as ``NAME`` when unset), as W&B's
    ``create_sweep_command``."""
    out = []
    for chunk in command:
        for m in list(ENVVAR.finditer(chunk))[::-1]:
            chunk = f"{chunk[:m.start()]}{os.environ.get(m.group(1), m.group(1))}{chunk[m.end():]}"
        out.append(chunk)
    return out


def args_macros(values: dict[str, Any]) -> dict[str, Any]:
    """``${args}`` and its other formats for these values, as W&B's ``create_sweep_command_args``."""
    flags, no_hyphens, no_booleans, no_equals, append_hydra, override_hydra = [], [], [], [], [], []
    for param, value in values.items():
        flag = f"{param}={value}"
        flags.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{param}", str(value)]
        append_hydra.append("+" + flag)
        override_hydra.append("++" + flag)
        if isinstance(value, bool):
            if value:  # a false boolean is left out
                no_booleans.append("--" + param)
        else:
            no_booleans.append("--" + flag)
    return {"args": flags, "args_no_equals": no_equals, "args_no_hyphens": no_hyphens,
            "args_no_boolean_flags": no_booleans, "args_json": [json.dumps(dict(values))],
            "args_dict": dict(values), "args_append_hydra": append_hydra, "args_override_hydra": override_hydra}


def expand_command(command: list[Any], values: dict[str, Any], extra_args: list[str] = (),
                   program: str | None = None) -> list[str]:
    """The argv ``wandb agent`` would run for these values, plus ``extra_args`` after ${args}.
    A leading ``hpplug`` runs as ``<this python> -m hpplug`` so the trial uses this install."""
    macros = args_macros(values)
    macros["args"] = macros["args"] + list(extra_args)
    macros["interpreter"] = [sys.executable]
    macros["program"] = [program] if program else []
    macros["env"] = ["/usr/bin/env"] if os.path.exists("/usr/bin/env") else []
    argv: list[str] = []
    for chunk in with_envvars([str(c) for c in command]):
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += macros.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    for i, tok in enumerate(argv):
        if tok == "hpplug" and (i == 0 or argv[i - 1] not in ("-m", "--module")):
            return argv[:i] + [sys.executable, "-m", "hpplug"] + argv[i + 1:]
    return argv
