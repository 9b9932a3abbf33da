"""DenseNet-121 (growth 32, blocks 6-12-24-16, bottleneck 4, compression 0.5) in the CIFAR form: a 3×3 stem with
2×growth channels and no max-pool. Transitions average-pool only while the map is at least 2×2."""

from __future__ import annotations

import torch
from torch import nn

from .common import Classifier, halve


class DenseLayer(nn.Module):
    """BN–ReLU–1×1 conv (4×growth) – BN–ReLU–3×3 conv (growth), concatenated to its input."""

    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def densenet121(
    in_channels: int,
    num_classes: int,
    image_size: int,
    growth: int = 32,
    blocks: tuple[int, ...] = (6, 12, 24, 16),
    bn_size: int = 4,
) -> Classifier:
    """DenseNet-121 for ``in_channels``×``image_size``×``image_size`` inputs."""
    c = 2 * growth
    layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False)]
    size = image_size
    for i, n in enumerate(blocks):
        for _ in range(n):
            layers.append(DenseLayer(c, growth, bn_size))
            c += growth
        if i < len(blocks) - 1:
            out = c // 2
            layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, out, 1, bias=False)]
            ok, size = halve(size)
            if ok:
                layers.append(nn.AvgPool2d(2))
            c = out
    layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*layers), c, num_classes)
