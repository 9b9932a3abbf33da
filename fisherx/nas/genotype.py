"""Genotypes: the architecture of a cell-based network as data (docs/nas.md).

A genotype holds two cells, ``normal`` and ``reduce``. A cell is a list of nodes; node j takes exactly two inputs,
each ``(operation, input)``, and computes ``n_j = op_a(s_a) + op_b(s_b)``. Inputs are numbered as in DARTS:
0 = the output of the cell two back (c[k-2]), 1 = the previous cell's output (c[k-1]), 2 + i = node i of this cell.
Node j may read only inputs < 2 + j (the cell is a DAG in node order). The cell's output concatenates all its nodes.

The JSON form is versioned (``{"format": "fisherx.genotype", "version": 2, "opset": ..., ...}``) and round-trips
exactly: ``Genotype.from_json(g.to_json()) == g`` and ``Genotype.from_json(s).to_json() == s`` for any ``s`` written
here without a space. It records the operation set (:data:`fisherx.nas.ops.OPSET`: name, version and op names) and,
when given one, the search space with its hash, so that the file alone says how to build the network (the skeleton)
and a reader can check that the space was not altered. Version 1 files (no opset, no space) are still read.
Converters to the DARTS and NAS-Bench-201 forms are in :mod:`fisherx.nas.formats`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..io import atomic_write_text
from . import ops as _ops

if TYPE_CHECKING:  # pragma: no cover
    from .space import SearchSpace

GENOTYPE_FORMAT = "fisherx.genotype"
GENOTYPE_VERSION = 2
_READABLE_VERSIONS = (1, 2)

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
            if not isinstance(op, str) or op not in _ops.OPS:
                raise GenotypeError(f"{where}: unknown operation {op!r}; the operations are {', '.join(_ops.OP_NAMES)}")
            if isinstance(inp, bool) or not isinstance(inp, int):
                raise GenotypeError(f"{where}: input index must be an integer, got {inp!r}")
            if inp < 0:
                raise GenotypeError(f"{where}: input index {inp} is negative")
            if inp >= 2 + j:
                what = "itself" if inp == 2 + j else f"node n{inp - 2}, which comes later"
                raise GenotypeError(
                    f"{where} reads {what} (input {inp}); node n{j} may read only the two cell "
                    f"inputs (0, 1) and earlier nodes (2 .. {j + 1})"
                )
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
        return tuple(
            tuple(tuple(sorted(node, key=lambda e: (e[1], e[0]))) for node in cell)
            for cell in (self.normal, self.reduce)
        )

    # ------------------------------------------------------------------------------------------------- JSON
    def to_dict(self, space: SearchSpace | None = None) -> dict:
        """The JSON-able form; with ``space`` (which must contain this genotype) the space and its hash too."""
        d = {
            "format": GENOTYPE_FORMAT,
            "version": GENOTYPE_VERSION,
            "opset": _ops.opset_record(),
            "normal": [[[op, inp] for op, inp in node] for node in self.normal],
            "reduce": [[[op, inp] for op, inp in node] for node in self.reduce],
        }
        if space is not None:
            space.check(self)  # a file must not claim a space its genotype is outside of
            d["space"] = space.to_dict()
        return d

    def to_json(self, indent: int | None = None, space: SearchSpace | None = None) -> str:
        return json.dumps(self.to_dict(space), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, source: str = "genotype") -> Genotype:
        """The genotype of a dict :meth:`to_dict` wrote (version 1 or 2). A recorded space is checked (its hash, and
        that it contains the genotype) but not returned: :meth:`from_dict_with_space` returns it."""
        return cls.from_dict_with_space(d, source)[0]

    @classmethod
    def from_dict_with_space(cls, d: Any, source: str = "genotype") -> tuple[Genotype, SearchSpace | None]:
        """(genotype, the recorded search space or None)."""
        if not isinstance(d, dict):
            raise GenotypeError(f"{source}: a genotype must be a JSON object, got {type(d).__name__}")
        fmt, ver = d.get("format"), d.get("version")
        if fmt != GENOTYPE_FORMAT:
            raise GenotypeError(f"{source}: not a fisherx genotype (format {fmt!r}, expected {GENOTYPE_FORMAT!r})")
        if ver not in _READABLE_VERSIONS:
            raise GenotypeError(
                f"{source}: genotype version {ver!r} is not supported (this fisherx reads "
                f"versions {', '.join(map(str, _READABLE_VERSIONS))})"
            )
        allowed = {"format", "version", "normal", "reduce"} | ({"opset", "space"} if ver >= 2 else set())
        extra = set(d) - allowed
        if extra:
            raise GenotypeError(f"{source}: unexpected keys {sorted(extra)}")
        if ver >= 2:
            check_opset(d.get("opset"), source)
        for k in ("normal", "reduce"):
            if k not in d:
                raise GenotypeError(f"{source}: the {k} cell is missing")
        try:
            g = cls(normal=d["normal"], reduce=d["reduce"])
        except GenotypeError as e:
            raise GenotypeError(f"{source}: {e}") from None
        space = None
        if d.get("space") is not None:
            from .space import SearchSpace, SearchSpaceError

            try:
                space = SearchSpace.from_dict(d["space"], f"{source}: space")
                space.check(g)
            except SearchSpaceError as e:
                raise GenotypeError(str(e) if str(e).startswith(source) else f"{source}: {e}") from None
        return g, space

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> Genotype:
        return cls.from_dict(_parse_json(text, source), source)

    def save(self, path, space: SearchSpace | None = None) -> Any:
        """Write the JSON form (with ``space``, see :meth:`to_dict`) atomically (a reader sees the old file or the
        new one)."""
        return atomic_write_text(path, self.to_json(indent=1, space=space) + "\n")

    @classmethod
    def load(cls, path) -> Genotype:
        return cls.load_with_space(path)[0]

    @classmethod
    def load_with_space(cls, path) -> tuple[Genotype, SearchSpace | None]:
        """(genotype, recorded search space or None) of a file :meth:`save` wrote."""
        from pathlib import Path

        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:  # a damaged byte can make the file invalid UTF-8
            why = getattr(e, "strerror", None) or e
            raise GenotypeError(f"{path}: cannot read the genotype file ({why})") from None
        return cls.from_dict_with_space(_parse_json(text, str(path)), str(path))

    # ------------------------------------------------------------------------------------------------- text
    def __str__(self) -> str:
        return "\n".join(
            f"{name}: {_cell_text(cell)}" for name, cell in (("normal", self.normal), ("reduce", self.reduce))
        )


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GenotypeError(f"{source}: not valid JSON ({e})") from None


def check_opset(opset: Any, source: str) -> None:
    """Refuse a file written against another operation set, or with an operation this fisherx lacks or computes
    differently now (per-operation versions, :data:`fisherx.nas.ops.OP_VERSIONS`)."""
    problem = _ops.check_opset_record(opset, source)
    if problem:
        raise GenotypeError(problem)


def _cell_text(cell: CellSpec) -> str:
    parts = [f"n{j} = {a}({_input_name(i)}) + {b}({_input_name(k)})" for j, ((a, i), (b, k)) in enumerate(cell)]
    parts.append("out = concat(" + ", ".join(f"n{j}" for j in range(len(cell))) + ")")
    return "; ".join(parts)
