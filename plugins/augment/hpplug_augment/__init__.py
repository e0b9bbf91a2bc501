"""Batched data augmentation for hpplug: whole batches on the device, parameters per sample.

Instead of torchvision transforms run per image on CPU worker processes, each method draws
its random parameters for all samples at once (from ``batch.generator``) and applies them
with a few tensor ops on ``batch.x`` where it already lives.
"""

__version__ = "0.1.0"
