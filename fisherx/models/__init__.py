"""ε-approximation networks (test accuracy ≥ 1 − ε; docs/tasks.md), written in the package (torchvision is not
a dependency): VGG-16, ResNet-18 and DenseNet-121 adapted to small inputs and any channel count, plus a small CNN
and an MLP.

Every network is a :class:`Classifier`: a ``features`` trunk and a final ``classifier`` linear head.
"""

from __future__ import annotations

from torch import nn

from .autoencoder import Autoencoder, autoencoder
from .common import Classifier
from .densenet import densenet121
from .resnet import resnet18
from .small import cnn, mlp
from .training import (
    EpsilonWarning,
    TrainResult,
    default_device,
    evaluate,
    evaluate_loss,
    per_sample_losses,
    seeded,
    train,
)
from .vgg import vgg16

ARCHS = {"vgg16": vgg16, "resnet18": resnet18, "densenet121": densenet121, "cnn": cnn, "mlp": mlp}
# Pixel-to-pixel ε-networks (not classifiers): for these, build's num_classes is the target's channel count.
PIXEL_ARCHS = {"autoencoder": autoencoder}


def build(arch: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised network ``arch`` (one of :data:`ARCHS` or :data:`PIXEL_ARCHS`) for
    ``in_channels``×``image_size``×``image_size`` images and ``num_classes`` outputs (for a pixel network: the
    target's channels). Initialisation draws from torch's global generator: seed it (or use
    :func:`fisherx.models.seeded`) for reproducible weights."""
    makers = {**ARCHS, **PIXEL_ARCHS}
    if arch not in makers:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(makers)}")
    for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("image_size", image_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"build({arch!r}): {name} must be a positive int, got {v!r}")
    return makers[arch](in_channels, num_classes, image_size)


__all__ = [
    "ARCHS",
    "PIXEL_ARCHS",
    "Autoencoder",
    "Classifier",
    "autoencoder",
    "EpsilonWarning",
    "TrainResult",
    "build",
    "cnn",
    "default_device",
    "densenet121",
    "evaluate",
    "evaluate_loss",
    "mlp",
    "per_sample_losses",
    "resnet18",
    "seeded",
    "train",
    "vgg16",
]
