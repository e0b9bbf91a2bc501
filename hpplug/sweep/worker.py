"""A pack process of ``hpplug sweep --pack``: ``python -m hpplug.sweep.worker YAML SWEEP_DIR ID...``.

It trains the trials ``ID...`` of the sweep as one pack (``hpplug.pack.run_pack``), each a
complete run: its record ``<sweep dir>/runs/<id>``, its W&B run (id = trial id, group =
sweep id, as ``WANDB_RUN_ID`` and ``WANDB_RUN_GROUP`` make an unpacked trial's), resumed
from its checkpoint when it has one. Each member's command line is rebuilt from the YAML
and the trial's values in ``sweep.json`` exactly as the runner builds it (``trials.command``),
and read as ``hpplug run`` reads it: nothing read from disk is run. The runner holds every
member's lock file for this process from its start (``trials.start``), so a later runner
finds live members. SIGINT or SIGTERM checkpoint every member (exit 128 + signal).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hpplug.errors import HpplugError


def main(argv: list[str]) -> int:
    from hpplug.manager import discover
    from hpplug.pack import run_pack
    from hpplug.sweep import packing, state
    from hpplug.sweep.spec import load
    from hpplug.sweep.trials import command

    if len(argv) < 3:
        raise HpplugError("usage: python -m hpplug.sweep.worker YAML SWEEP_DIR TRIAL_ID...")
    yaml_file, sweep_dir, ids = argv[0], Path(argv[1]), argv[2:]
    spec, problems = load(yaml_file)
    if spec is None or problems:
        raise HpplugError(f"{yaml_file} cannot run as a sweep: {problems[0] if problems else 'unreadable'}")
    sweep = state.read(sweep_dir / "sweep.json", spec)
    by_id = {t.id: t for t in sweep.trials} if sweep is not None else {}
    catalog = discover()
    members = []
    for trial_id in ids:
        trial = by_id.get(trial_id)
        if trial is None:
            raise HpplugError(f"{sweep_dir / 'sweep.json'} has no trial {trial_id}")
        member = packing.member_of(catalog, command(spec, sweep_dir / "runs", trial.values), trial,
                                   sweep.sweep_id)  # type: ignore[union-attr]
        if member is None:
            raise HpplugError(f"trial {trial.number} {trial_id}: its command is not hpplug run; it cannot be packed")
        members.append(member)
    results = run_pack(members, show_progress=False)
    signums = [r.signum or 2 for r in results if r.status == "interrupted"]
    return 128 + signums[0] if signums else 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except HpplugError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    from hpplug.exiting import exit_now

    exit_now(code)  # the members' records and W&B runs are closed: no interpreter teardown
    sys.exit(code)
