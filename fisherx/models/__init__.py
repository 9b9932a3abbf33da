"""ε-approximation networks (test accuracy ≥ 1 − ε; docs/tasks.md), written in the package (torchvision is not
a dependency): VGG-16, ResNet-18 and DenseNet-121 adapted to small inputs and any channel count, plus a small CNN and an MLP.

Every network is a :class:`Classifier`: a ``features`` trunk and a final ``classifier`` linear head.
"""
from __future__ import annotations

from torch import nn

from .common import Classifier
from .densenet import densenet121
from .resnet import resnet18
from .small import cnn, mlp
from .training import EpsilonWarning, TrainResult, default_device, evaluate, seeded, train
from .vgg import vgg16

ARCHS = {"vgg16": vgg16, "resnet18": resnet18, "densenet121": densenet121, "cnn": cnn, "mlp": mlp}


def build(arch: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised network ``arch`` (one of :data:`ARCHS`) for ``in_channels``×``image_size``×``image_size``
    images and ``num_classes`` outputs. Initialisation draws from torch's global generator: seed it (or use
    :func:`fisherx.models.seeded`) for reproducible weights."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("image_size", image_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"build({arch!r}): {name} must be a positive int, got {v!r}")
    return ARCHS[arch](in_channels, num_classes, image_size)


__all__ = ["ARCHS", "Classifier", "EpsilonWarning", "TrainResult", "build", "cnn", "default_device", "densenet121",
           "evaluate", "mlp", "resnet18", "seeded", "train", "vgg16"]
