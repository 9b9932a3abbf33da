"""Small networks for quick runs: a two-layer CNN and an MLP (784-256-128-10 on MNIST, as in the papers'
reference run)."""

from __future__ import annotations

from torch import nn

from .common import Classifier, halve


def cnn(in_channels: int, num_classes: int, image_size: int) -> Classifier:
    """conv 3×3 (32) – ReLU – max-pool – conv 3×3 (64) – ReLU – max-pool – linear 128 – ReLU – linear head."""
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    for width in (32, 64):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
        ok, size = halve(size)
        if ok:
            layers.append(nn.MaxPool2d(2))
        c = width
    layers += [nn.Flatten(), nn.Linear(c * size * size, 128), nn.ReLU(inplace=True)]
    return Classifier(nn.Sequential(*layers), 128, num_classes)


def mlp(in_channels: int, num_classes: int, image_size: int, hidden: tuple[int, ...] = (256, 128)) -> Classifier:
    """Flatten – linear 256 – ReLU – linear 128 – ReLU – linear head."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_channels * image_size * image_size
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
        d = h
    return Classifier(nn.Sequential(*layers), d, num_classes)
