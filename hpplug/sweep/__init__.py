"""``hpplug sweep``: a W&B sweep YAML run on this machine with W&B's own sweep engine.

Modules, in the order a sweep uses them:

- ``command``: the ``hpplug sweep`` command (options, the sweep folder, the run).
- ``spec``, ``checks``, ``template``: the YAML, its checks, trial command lines; templates.
- ``state``: ``sweep.json`` as a typed :class:`~hpplug.sweep.state.SweepState` of
  :class:`~hpplug.sweep.state.Trial` records, read back as untrusted input.
- ``runner``: the loop (suggest, start, watch, record); ``wandb_engine``: W&B's engine fed
  from the trials; ``launcher``: the trials' processes; ``trials``: starting, locking,
  signalling and adopting a process; ``records``: what a trial's run record says.
- ``report``, ``plot``: the table, the best command, ``summary.json`` and the pictures.

Nothing here imports torch: ``hpplug sweep --help`` stays fast.
"""
