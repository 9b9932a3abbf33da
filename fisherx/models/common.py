"""What every ε-approximation network shares: a ``features`` trunk and a final linear ``classifier`` head, so that
the head can be refitted on another task (docs/tasks.md, head modes) and every architecture reads the same."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """``features`` (anything producing N×D) followed by ``classifier = nn.Linear(D, num_classes)``."""

    def __init__(self, features: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def halve(size: int) -> tuple[bool, int]:
    """Whether a stride-2 stage still fits a ``size``×``size`` map, and the size after it. Small inputs (8×8 digits)
    skip the down-sampling stages that would shrink the map below 1×1, which is how the networks adapt to them."""
    return (True, size // 2) if size >= 2 else (False, size)
