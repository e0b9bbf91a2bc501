"""Batch-size policies for hpplug: make the LR / batch-size relation explicit and sweepable."""

__version__ = "0.1.0"
