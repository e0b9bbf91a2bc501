"""``hpplug sweep``: run a W&B sweep YAML on this machine with W&B's own sweep engine.

W&B runs sweeps only against its server; this runs the same YAML offline. The engine is
W&B's open-source ``sweeps`` package (grid, random and Bayesian search, hyperband early
termination); each trial is the command ``wandb agent`` would run (same ``command:``, same
macro expansion) as a normal ``hpplug run``, tracked in W&B (offline without credentials)
in the group ``<sweep id>``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from hpplug.errors import HpplugError
from hpplug.sweep.spec import SweepSpec

MAX_PARALLEL = 64
# What a sweep folder may hold before its sweep.json exists (a runner killed at its start).
_FRESH = ("sweep.lock", "logs")
EXTRA = "'hpplug[sweep]'"  # the sweep engine is an extra of hpplug: training needs none of it


def require_engine() -> None:
    """W&B's sweep engine, at a version that works (0.2 drops run history under pydantic 2)."""
    try:
        import sweeps
    except ImportError:
        raise HpplugError(f"hpplug sweep needs W&B's sweep engine, the 'sweep' extra of hpplug: "
                          f"pip install {EXTRA}") from None
    from packaging.version import Version

    if Version(sweeps.__version__) < Version("0.3"):
        raise HpplugError(f"sweeps {sweeps.__version__} is installed; hpplug sweep needs sweeps>=0.3 "
                          f"(0.2 loses run history under pydantic 2): pip install -U {EXTRA}")


def check(path: str | Path, catalog: dict[str, Any]) -> SweepSpec:
    """Load and check a sweep YAML: one problem is one error line; several are listed
    (exit 2 either way)."""
    from hpplug.sweep import checks as sweep_checks, spec as sweep_spec

    spec, found = sweep_spec.load(path)
    if spec is not None:
        found = sweep_checks.problems(spec, catalog)
    if len(found) == 1:
        raise HpplugError(f"{path} cannot run as a sweep: {found[0]}")
    if found:
        click.echo(f"Error: {path} cannot run as a sweep ({len(found)} problem{'s' * (len(found) > 1)}):", err=True)
        for problem in found:
            click.echo(f"  - {problem}", err=True)
        sys.exit(2)
    for warning in sweep_checks.warnings_for(spec):
        click.echo(f"Warning: {warning}", err=True)
    return spec


def sweep_folder(sweep_dir: str | None, spec: SweepSpec) -> Path:
    """The sweep's folder: ``--dir``, or ``sweeps-runs/<sweep id>``. Everything the sweep
    writes goes inside it, so it must be named plainly, and be new, empty or a sweep's."""
    if sweep_dir is None:
        return Path("sweeps-runs") / spec.sweep_id
    folder = Path(sweep_dir)
    if "\0" in sweep_dir or not sweep_dir.strip() or ".." in folder.parts:
        raise HpplugError(f"--dir {sweep_dir!r}: name the sweep folder plainly, without '..' "
                          "(a relative or an absolute path)")
    if folder.exists() and not folder.is_dir():
        raise HpplugError(f"--dir {sweep_dir}: is a file; give a new or empty folder, or an existing sweep's folder")
    if folder.is_dir() and not (folder / "sweep.json").exists():
        others = sorted(p.name for p in folder.iterdir() if p.name not in _FRESH and not p.name.startswith(".sweep.json."))
        if others:
            raise HpplugError(f"--dir {sweep_dir}: holds other files ({', '.join(others[:3])}) and no sweep.json; "
                              "give a new or empty folder, or an existing sweep's folder")
    return folder


def write_template(text: str, output: str) -> None:
    """Write a template YAML to a new file; an existing file is never overwritten."""
    from hpplug.atomic import write_atomic

    path = Path(output)
    try:
        if path.exists():
            raise HpplugError(f"-o {output}: exists; give a new file name (a template never overwrites a file)")
        write_atomic(path, text)
    except (OSError, ValueError) as exc:
        raise HpplugError(f"-o {output}: cannot write it: {getattr(exc, 'strerror', None) or exc}") from None


class SweepCommand(click.Command):
    """``--pack`` takes an optional value, so click would read ``--pack -1`` as ``--pack``
    followed by an unknown option ``-1``: a negative size is named as what it is."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for before, arg in zip(["", *args], args):
            value = arg[len("--pack="):] if arg.startswith("--pack=") else arg if before == "--pack" else ""
            if value.startswith("-") and value[1:].isdigit():
                raise click.BadParameter(f"{value} is not in the range x>=1 (a number of trials per process)",
                                         ctx=ctx, param_hint="'--pack'")
        return super().parse_args(ctx, args)


@click.command("sweep", cls=SweepCommand, context_settings={"max_content_width": 100})
@click.argument("yaml_file", required=False, type=click.Path(dir_okay=False))
@click.option("--count", type=click.IntRange(1), help="Start at most N new trials now (like wandb agent --count).")
@click.option("--parallel", type=click.IntRange(1, MAX_PARALLEL), default=1, show_default=True,
              help=f"Trials run at once (at most {MAX_PARALLEL}).")
@click.option("--pack", type=click.IntRange(1), default=1, flag_value=8, is_flag=False, metavar="K",
              help="Train up to K trials at once in one process, as one vectorized model (--pack alone: 8; "
                   "default 1: each trial alone). Trials pack together when their command is hpplug run and "
                   "they share the model, data set, batch size, epochs and optimizer, with plugins that support "
                   "packing; the others run alone, as without --pack. --parallel counts processes.")
@click.option("--dir", "sweep_dir", type=click.Path(file_okay=False),
              help="Sweep folder [default: sweeps-runs/<sweep id>, the id from the YAML's path and content].")
@click.option("--wandb-mode", type=click.Choice(["online", "offline", "disabled"]),
              help="W&B mode of the trials [default: online with credentials, else offline].")
@click.option("--seed", help="Seed of the random and Bayesian suggestions [default: the sweep id].")
@click.option("--dry-run", is_flag=True, help="Check the YAML and show the next trial's command; run nothing.")
@click.option("--template", is_flag=True, help="Write a starting YAML from the plugins' declared parameters.")
@click.option("--plugin", "-p", "plugins", multiple=True, metavar="NAME", help="With --template: a plugin to include.")
@click.option("--method", type=click.Choice(["bayes", "random", "grid"]), default="bayes", show_default=True,
              help="With --template: the search method.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="With --template: write to FILE, not stdout.")
def sweep_command(yaml_file: str | None, count: int | None, parallel: int, pack: int, sweep_dir: str | None,
                  wandb_mode: str | None, seed: str | None, dry_run: bool, template: bool,
                  plugins: tuple[str, ...], method: str, output: str | None) -> None:
    """Run a W&B sweep YAML on this machine, with W&B's own sweep engine.

    Grid, random and Bayesian search, run_cap, metric.target and hyperband early
    termination, as the W&B server would run them; each trial is a normal hpplug run,
    tracked in W&B (offline without credentials) in the group <sweep id>. Run the same
    command again to continue an interrupted sweep. The same YAML works with
    `wandb sweep` + `wandb agent`.
    """
    from hpplug.plugin_cache import catalog as plugin_catalog
    from hpplug.run_args import split_plugin_names
    from hpplug.sweep import template as sweep_template

    # The plugins' metadata, not their classes: the runner checks and groups trials without
    # importing torch; each trial's process imports what it runs.
    catalog = plugin_catalog()
    if template:
        if yaml_file:
            raise HpplugError("--template writes a new YAML; give no sweep file with it (use -o FILE)")
        text = sweep_template.template(catalog, split_plugin_names(plugins), method)
        if output:
            write_template(text, output)
            click.echo(f"wrote {output}; run it with: hpplug sweep {output}")
        else:
            click.echo(text, nl=False)
        return
    if not yaml_file:
        raise HpplugError("give a sweep YAML (e.g. sweeps/bayes.yaml), or --template to write one")
    require_engine()
    spec = check(yaml_file, catalog)
    try:
        run_sweep(spec, sweep_folder(sweep_dir, spec), yaml_file, dry_run,
                  dict(parallel=parallel, count=count, wandb_mode=wandb_mode, seed=seed, pack=pack, catalog=catalog))
    except OSError as exc:  # the sweep folder cannot be read or written (permissions, a full disk)
        raise HpplugError(f"{exc.filename or 'the sweep folder'}: {exc.strerror or exc}") from None


def run_sweep(spec: SweepSpec, folder: Path, yaml_file: str, dry_run: bool, options: dict[str, Any]) -> None:
    """Run (or, with ``dry_run``, show the next trial of) a checked sweep in ``folder``."""
    from hpplug.sweep import report as sweep_report
    from hpplug.sweep import wandb_engine
    from hpplug.sweep.runner import Runner

    runner = Runner(spec, folder, **options)
    if dry_run:
        runner.load()
        trial = runner.next.new_trial() if runner.next.may_start() else None
        argv = runner.procs.command(trial) if trial else []
        click.echo(f"{yaml_file}: OK ({spec.raw['method']} search, {len(spec.parameters)} parameters, "
                   f"metric {spec.metric} {spec.goal}); sweep id {spec.sweep_id}, folder {folder}")
        click.echo(f"trial {trial.number}: " + shlex.join(argv) if trial else
                   f"no trial left to run ({runner.state.done or 'grid exhausted'})")
        return
    total = wandb_engine.total(spec)
    click.echo(f"sweep {spec.sweep_id}: {spec.raw['method']} search on {spec.metric} ({spec.goal}), "
               f"{'' if total is None else f'{total} trials, '}{runner.parallel} at a time"
               f"{f' (packs of up to {runner.pack})' if runner.pack > 1 else ''}; folder {folder}")
    code = runner.run()
    text, _ = sweep_report.write(spec, runner.state, folder)
    click.echo(text)
    if runner.state.done:
        click.echo(f"sweep complete: {runner.state.done}")
    elif code > 128:
        click.echo(f"sweep interrupted; run the same command again to continue ({folder / 'sweep.json'})")
    click.get_current_context().exit(code)  # returned by hpplug.cli.main, which ends the process
