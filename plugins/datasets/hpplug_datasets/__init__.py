"""Data sets for hpplug, one per sub-package: digits, mnist, fashion-mnist, cifar10, imagefolder."""

__version__ = "0.1.0"
