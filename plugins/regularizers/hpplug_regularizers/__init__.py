"""Regularizers for hpplug, one method per sub-package: dropout, weight decay, label smoothing."""

__version__ = "0.1.0"
