"""VGG-16 (configuration D) with batch normalisation, CIFAR-style: 3×3 convolutions, global average pooling and
one linear layer, as commonly used for 32×32 inputs. Max-pools that would shrink the map below 1×1 are left out."""

from __future__ import annotations

from torch import nn

from .common import Classifier, halve

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(in_channels: int, num_classes: int, image_size: int) -> Classifier:
    """VGG-16 for ``in_channels``×``image_size``×``image_size`` inputs."""
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    for v in VGG16:
        if v == "M":
            ok, size = halve(size)
            if ok:
                layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*layers), c, num_classes)
