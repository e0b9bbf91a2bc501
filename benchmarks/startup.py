"""How long hpplug's commands take as whole processes: what a person (or a sweep) waits for.

```
python benchmarks/startup.py [--repeats 5] [--only NAME ...] [--cold]
```

Prints, per command, the median wall time of ``--repeats`` fresh processes (``python -m
hpplug ...``, the way the ``hpplug`` script starts), and their median CPU time (user + system,
of the process and the children it waited for): on a busy machine the CPU time still says
what the command costs, the wall time does not. One untimed process runs first, so the
plugin metadata cache is warm and the files are in the page cache; ``--cold`` removes the
cache before every timed process instead. The one-epoch ``digits`` run trains the default
MLP with W&B offline into a temporary folder. Timings are only comparable on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPLETION = {"_HPPLUG_COMPLETE": "bash_complete", "COMP_WORDS": "hpplug run --plugin cos", "COMP_CWORD": "3"}


def commands(scratch: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (hpplug's arguments, extra environment)."""
    return {
        "--help": (["--help"], {}),
        "--version": (["--version"], {}),
        "plugins": (["plugins"], {}),
        "run --help": (["run", "--help"], {}),
        "run --plugin cosine --help": (["run", "--plugin", "cosine", "--help"], {}),
        "completion": ([], COMPLETION),
        "run --epochs 1 (digits)": (["run", "--epochs", "1", "--wandb-mode", "offline", "--output-dir",
                                     str(scratch / "runs")], {"WANDB_SILENT": "true"}),
    }


def once(args: list[str], env: dict[str, str], cache: Path, cold: bool) -> tuple[float, float]:
    """Wall and CPU seconds of one ``python -m hpplug ARGS`` process."""
    if cold:
        shutil.rmtree(cache, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hpplug", *args], env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"hpplug {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="names of the commands to time (default: all)")
    parser.add_argument("--cold", action="store_true", help="remove the plugin metadata cache before each process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        cache = scratch / "cache"
        base = {**os.environ, "HPPLUG_CACHE_DIR": str(cache), "WANDB_MODE": "offline",
                "WANDB_CONFIG_DIR": str(scratch / "wandb-config")}
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
        print(f"{sys.executable}; {args.repeats} processes each; load per core {load:.2f}"
              f"{' (busy: timings are not comparable)' if load > 0.3 else ''}; cache {'cold' if args.cold else 'warm'}")
        for name, (argv, extra) in commands(scratch).items():
            if args.only and name not in args.only:
                continue
            env = {**base, **extra}
            once(argv, env, cache, cold=False)  # warms the page cache (and the plugin cache)
            walls, cpus = zip(*[once(argv, env, cache, args.cold) for _ in range(args.repeats)])
            print(f"{name:28s} wall {statistics.median(walls):6.3f} s (min {min(walls):.3f}, max {max(walls):.3f})"
                  f"  cpu {statistics.median(cpus):6.3f} s", flush=True)


if __name__ == "__main__":
    main()
