"""``hpplug sweep``: a W&B sweep YAML run on this machine with W&B's own sweep engine.

Modules, in the order a sweep uses them:

- ``command``: the ``hpplug sweep`` command (options, the sweep folder, the run).
- ``spec``, ``checks``, ``template``: the YAML, its checks; templates. ``macros``: a trial's
  command line, as ``wandb agent`` renders it.
- ``state``: ``sweep.json`` as a typed :class:`~hpplug.sweep.state.SweepState` of
  :class:`~hpplug.sweep.state.Trial` records, read back as untrusted input.
- ``runner``: the loop (start, watch, record); ``suggestions``: which trial starts next,
  and when none does; ``wandb_engine``: W&B's engine fed from the trials; ``launcher``: the
  trials' processes; ``trials``: starting, locking, signalling and adopting a process;
  ``records``: what a trial's run record says.
- ``packing``: which trials train together (``--pack``); ``worker``: the pack process.
- ``report``, ``plot``: the table, the best command, ``summary.json`` and the pictures.

The runner imports no torch and no plugin (it reads them from :mod:`hpplug.plugin_cache`),
so a sweep starts its trials in about a second; the trials' processes import what they run.
"""
