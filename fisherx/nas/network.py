"""The skeleton every genotype is built on: stem, stacked normal and reduction cells, global pooling, classifier.

    stem: 3×3 conv (in_channels → stem_multiplier·width), BatchNorm
    cells 0 .. depth−1: cell i is a reduction cell (doubling the channels C, halving H and W) when
                        i ∈ {⌊depth/3⌋, ⌊2·depth/3⌋}, otherwise a normal cell; C starts at ``width``
    global average pooling (a mean over H and W), then a linear classifier to ``num_classes`` logits

This is the DARTS skeleton; ``width`` (C of the first cells) and ``depth`` (number of cells) are the knobs. With
depth 1 the single cell is a reduction cell, with depth 2 both are.
"""

from __future__ import annotations

import torch
from torch import nn

from .cells import Cell
from .genotype import Genotype


def reduction_positions(depth: int) -> set[int]:
    return {depth // 3, 2 * depth // 3}


def build(
    genotype: Genotype, in_channels: int, num_classes: int, width: int = 16, depth: int = 5, stem_multiplier: int = 3
) -> Network:
    """The network of ``genotype`` on the standard skeleton (a :class:`Network`). A :class:`Genotype` is data
    only; networks are built here, so genotype.py imports nothing of the network code."""
    return Network(genotype, in_channels, num_classes, width=width, depth=depth, stem_multiplier=stem_multiplier)


def num_params(
    genotype: Genotype, in_channels: int, num_classes: int, width: int = 16, depth: int = 5, stem_multiplier: int = 3
) -> int:
    """Trainable parameter count of :func:`build` (built on the ``meta`` device: no memory, no init cost)."""
    with torch.device("meta"):
        net = build(genotype, in_channels, num_classes, width=width, depth=depth, stem_multiplier=stem_multiplier)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


class Network(nn.Module):
    def __init__(
        self,
        genotype: Genotype,
        in_channels: int,
        num_classes: int,
        width: int = 16,
        depth: int = 5,
        stem_multiplier: int = 3,
        affine: bool = True,
    ):
        super().__init__()
        if not isinstance(genotype, Genotype):
            raise TypeError(f"genotype must be a Genotype, got {type(genotype).__name__}")
        for name, v, lo in (
            ("in_channels", in_channels, 1),
            ("num_classes", num_classes, 1),
            ("depth", depth, 1),
            ("stem_multiplier", stem_multiplier, 1),
            ("width", width, 2),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer ≥ {lo}, got {v!r}")
        if width % 2:
            # Factorised reduce splits the channels in two halves.
            raise ValueError(f"width must be even (the factorised reduce splits channels in halves), got {width}")
        self.genotype = genotype
        c_stem = stem_multiplier * width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem, affine=affine)
        )
        c_pp, c_p, c = c_stem, c_stem, width
        reductions = reduction_positions(depth)
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(depth):
            reduction = i in reductions
            if reduction:
                c *= 2
            cell = Cell(
                genotype.reduce if reduction else genotype.normal, c_pp, c_p, c, reduction, reduction_prev, affine
            )
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c
        # Global pooling is a plain mean, not nn.AdaptiveAvgPool2d: the latter's CUDA backward has no deterministic
        # implementation (PyTorch's use_deterministic_algorithms list), the mean's backward is a broadcast.
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(s1.mean(dim=(2, 3)))
