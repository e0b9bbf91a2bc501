"""Learning-rate schedules for hpplug, one method per sub-package.

Every schedule answers ``hpplug_lr_factor`` with a multiplier of the base LR computed in
closed form from ``Progress`` alone, so the LR is the same on any number of processes and
after a resume, and per-epoch stepping reproduces torch's own schedulers exactly.
"""

__version__ = "0.1.0"
