"""Models for hpplug, one plugin per sub-package: mlp, cnn, torchvision, timm.

Each is an ``hpplug.Model``: ``build(input_shape, num_classes)`` returns a fresh module that
maps ``[batch, *input_shape]`` floats to ``[batch, num_classes]`` logits. The zoo plugins
import their libraries inside ``build`` only, so listing plugins (``hpplug --help``) stays fast.
"""

__version__ = "0.1.0"
