"""ResNet-18 in the CIFAR form: a 3×3 stem without max-pool, four stages of two basic blocks (64–512 channels),
global average pooling, one linear layer. Stages down-sample only while the map is at least 2×2."""

from __future__ import annotations

import torch
from torch import nn

from .common import Classifier, halve


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers with an identity (or 1×1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet18(in_channels: int, num_classes: int, image_size: int) -> Classifier:
    """ResNet-18 for ``in_channels``×``image_size``×``image_size`` inputs."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
    ]
    c, size = 64, image_size
    for i, width in enumerate((64, 128, 256, 512)):
        stride = 1
        if i > 0:
            ok, size = halve(size)
            stride = 2 if ok else 1
        layers += [BasicBlock(c, width, stride), BasicBlock(width, width, 1)]
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*layers), c, num_classes)
