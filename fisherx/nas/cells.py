"""A cell: a DAG of nodes, each the sum of two operations on earlier states (DARTS-style; docs/nas.md).

States 0 and 1 are the two previous cells' outputs after a 1×1 ReLU-conv-BN preprocessing to C channels (a
factorised reduce for state 0 when the previous cell halved the size, so both inputs have the same shape). Node j
computes ``s_{2+j} = op_a(s_a) + op_b(s_b)`` with a, b < 2 + j; the output concatenates the nodes, n·C channels.
In a reduction cell the edges that read states 0 or 1 run at stride 2, so the cell halves H and W.
"""

from __future__ import annotations

import torch
from torch import nn

from .genotype import CellSpec
from .ops import FactorizedReduce, ReLUConvBN, make_op


class Cell(nn.Module):
    def __init__(
        self,
        nodes: CellSpec,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        affine: bool = True,
    ):
        super().__init__()
        self.reduction = reduction
        self.pre0 = (
            FactorizedReduce(c_prev_prev, channels, affine)
            if reduction_prev
            else ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine)
        )
        self.pre1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine)
        self.edges = nn.ModuleList()
        self.inputs: list[tuple[int, int]] = []
        for (op_a, in_a), (op_b, in_b) in nodes:
            for op, inp in ((op_a, in_a), (op_b, in_b)):
                stride = 2 if reduction and inp < 2 else 1
                self.edges.append(make_op(op, channels, stride, affine))
            self.inputs.append((in_a, in_b))
        self.multiplier = len(nodes)  # output channels = multiplier · channels

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for j, (a, b) in enumerate(self.inputs):
            states.append(self.edges[2 * j](states[a]) + self.edges[2 * j + 1](states[b]))
        return torch.cat(states[2:], dim=1)
