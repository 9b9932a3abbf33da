"""Genotypes: the architecture of a cell-based network as data (DESIGN §5).

A genotype holds two cells, ``normal`` and ``reduce``. A cell is a list of nodes; node j takes exactly two inputs,
each ``(operation, input)``, and computes ``n_j = op_a(s_a) + op_b(s_b)``. Inputs are numbered as in DARTS:
0 = the output of the cell two back (c[k-2]), 1 = the previous cell's output (c[k-1]), 2 + i = node i of this cell.
Node j may read only inputs < 2 + j (the cell is a DAG in node order). The cell's output concatenates all its nodes.

The JSON form is versioned (``{"format": "fisherx.genotype", "version": 1, ...}``) and round-trips exactly:
``Genotype.from_json(g.to_json()) == g`` and ``Genotype.from_json(s).to_json() == s`` for any ``s`` written here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .ops import OP_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network

GENOTYPE_FORMAT = "fisherx.genotype"
GENOTYPE_VERSION = 1

Node = tuple[tuple[str, int], tuple[str, int]]
CellSpec = tuple[Node, ...]


class GenotypeError(ValueError):
    """An invalid genotype; the message says which cell, node and input is wrong and why."""


def _input_name(i: int) -> str:
    return "c[k-2]" if i == 0 else "c[k-1]" if i == 1 else f"n{i - 2}"


def _check_cell(cell: Any, which: str) -> CellSpec:
    if isinstance(cell, (str, bytes)) or not isinstance(cell, Sequence):
        raise GenotypeError(f"the {which} cell must be a list of nodes, got {type(cell).__name__}")
    if len(cell) == 0:
        raise GenotypeError(f"the {which} cell has no nodes; a cell needs at least one")
    nodes = []
    for j, node in enumerate(cell):
        where = f"node n{j} of the {which} cell"
        if isinstance(node, (str, bytes)) or not isinstance(node, Sequence):
            raise GenotypeError(f"{where} must be a list of two (operation, input) pairs, got {node!r}")
        if len(node) != 2:
            raise GenotypeError(f"{where} has {len(node)} inputs; every node takes exactly 2")
        pairs = []
        for edge in node:
            if isinstance(edge, (str, bytes)) or not isinstance(edge, Sequence) or len(edge) != 2:
                raise GenotypeError(f"{where}: each input must be an (operation, input index) pair, got {edge!r}")
            op, inp = edge
            if not isinstance(op, str) or op not in OP_NAMES:
                raise GenotypeError(f"{where}: unknown operation {op!r}; the operations are {', '.join(OP_NAMES)}")
            if isinstance(inp, bool) or not isinstance(inp, int):
                raise GenotypeError(f"{where}: input index must be an integer, got {inp!r}")
            if inp < 0:
                raise GenotypeError(f"{where}: input index {inp} is negative")
            if inp >= 2 + j:
                what = "itself" if inp == 2 + j else f"node n{inp - 2}, which comes later"
                raise GenotypeError(f"{where} reads {what} (input {inp}); node n{j} may read only the two cell "
                                    f"inputs (0, 1) and earlier nodes (2 .. {j + 1})")
            pairs.append((op, inp))
        nodes.append((pairs[0], pairs[1]))
    return tuple(nodes)


@dataclass(frozen=True)
class Genotype:
    """A cell-based architecture: a ``normal`` and a ``reduce`` cell (see the module docstring for the encoding).

    Construction validates and normalises to tuples, so equal architectures compare (and hash) equal::

        g = Genotype(normal=[[("conv_3x3", 0), ("identity", 1)], [("max_pool_3x3", 1), ("conv_5x5", 2)],
                             [("zero", 0), ("dil_conv_3x3", 3)]],
                     reduce=[[("avg_pool_3x3", 0), ("conv_3x3", 1)], [("identity", 2), ("conv_7x7", 1)],
                             [("conv_7x1_1x7", 3), ("identity", 0)]])
    """

    normal: CellSpec
    reduce: CellSpec

    def __post_init__(self):
        object.__setattr__(self, "normal", _check_cell(self.normal, "normal"))
        object.__setattr__(self, "reduce", _check_cell(self.reduce, "reduce"))

    # ----------------------------------------------------------------------------------------------- identity
    def ops(self) -> set[str]:
        """The operations this genotype uses (both cells)."""
        return {op for cell in (self.normal, self.reduce) for node in cell for op, _ in node}

    def key(self) -> tuple:
        """A canonical key: two genotypes with the same key compute the same function family. A node's sum is
        commutative, so the order of its two inputs does not matter."""
        return tuple(tuple(tuple(sorted(node, key=lambda e: (e[1], e[0]))) for node in cell)
                     for cell in (self.normal, self.reduce))

    # ------------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        return {
            "format": GENOTYPE_FORMAT,
            "version": GENOTYPE_VERSION,
            "normal": [[[op, inp] for op, inp in node] for node in self.normal],
            "reduce": [[[op, inp] for op, inp in node] for node in self.reduce],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, source: str = "genotype") -> "Genotype":
        if not isinstance(d, dict):
            raise GenotypeError(f"{source}: a genotype must be a JSON object, got {type(d).__name__}")
        fmt, ver = d.get("format"), d.get("version")
        if fmt != GENOTYPE_FORMAT:
            raise GenotypeError(f"{source}: not a fisherx genotype (format {fmt!r}, expected {GENOTYPE_FORMAT!r})")
        if ver != GENOTYPE_VERSION:
            raise GenotypeError(f"{source}: genotype version {ver!r} is not supported (this fisherx reads "
                                f"version {GENOTYPE_VERSION})")
        extra = set(d) - {"format", "version", "normal", "reduce"}
        if extra:
            raise GenotypeError(f"{source}: unexpected keys {sorted(extra)}")
        for k in ("normal", "reduce"):
            if k not in d:
                raise GenotypeError(f"{source}: the {k} cell is missing")
        try:
            return cls(normal=d["normal"], reduce=d["reduce"])
        except GenotypeError as e:
            raise GenotypeError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> "Genotype":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"{source}: not valid JSON ({e})") from None
        return cls.from_dict(d, source)

    def save(self, path) -> Any:
        """Write the JSON form atomically (a reader sees the old file or the new one)."""
        from ..io import atomic_write_text

        return atomic_write_text(path, self.to_json(indent=1) + "\n")

    @classmethod
    def load(cls, path) -> "Genotype":
        from pathlib import Path

        return cls.from_json(Path(path).read_text(encoding="utf-8"), source=str(path))

    # ------------------------------------------------------------------------------------------------- text
    def __str__(self) -> str:
        return "\n".join(f"{name}: {_cell_text(cell)}" for name, cell in (("normal", self.normal),
                                                                          ("reduce", self.reduce)))

    # ------------------------------------------------------------------------------------------ networks
    def build(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 5,
              stem_multiplier: int = 3) -> "Network":
        """The network of this genotype on the standard skeleton (see :class:`fisherx.nas.network.Network`)."""
        from .network import Network

        return Network(self, in_channels, num_classes, width=width, depth=depth, stem_multiplier=stem_multiplier)

    def num_params(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 5,
                   stem_multiplier: int = 3) -> int:
        """Trainable parameter count of :meth:`build` (built on the ``meta`` device: no memory, no init cost)."""
        import torch

        with torch.device("meta"):
            net = self.build(in_channels, num_classes, width=width, depth=depth, stem_multiplier=stem_multiplier)
        return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _cell_text(cell: CellSpec) -> str:
    parts = [f"n{j} = {a}({_input_name(i)}) + {b}({_input_name(k)})" for j, ((a, i), (b, k)) in enumerate(cell)]
    parts.append("out = concat(" + ", ".join(f"n{j}" for j in range(len(cell))) + ")")
    return "; ".join(parts)

