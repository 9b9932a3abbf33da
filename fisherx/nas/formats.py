"""Architectures in other tools' words: the DARTS genotype form and the NAS-Bench-201 architecture string.

**DARTS** (Liu et al. 2019): ``Genotype(normal=[(op, input), ...], normal_concat=[...], reduce=[...],
reduce_concat=[...])``, two ``(op, input)`` pairs per node in node order, inputs numbered exactly as here (0 = c[k-2],
1 = c[k-1], 2 + i = node i). fisherx's ten operations *are* the DARTS operations (same modules, strides and padding),
so every fisherx genotype has a DARTS form and back; only the names differ:

    zero ↔ none, identity ↔ skip_connect, conv_k×k ↔ sep_conv_k×k, the others keep their names.

What cannot be expressed in fisherx is refused with the reason: a concat list that leaves out nodes (fisherx cells
concatenate all of theirs) or an operation outside the ten.

**NAS-Bench-201** (Dong & Yang 2020): ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``: a cell of 4 nodes, x0 its single
input and x_j = Σ_{i<j} op_ij(x_i), every one of the 6 edges one of {none, skip_connect, nor_conv_1x1, nor_conv_3x3,
avg_pool_3x3}. The string is a *cell DAG*; the two families build different networks around it (NAS-Bench-201 cells
output x3 alone and are joined by fixed residual reduction blocks; fisherx cells read two inputs, output the
concatenation of their nodes, and have a searched reduction cell). The converters translate the DAG — which
operation sits on which edge — where both sides can hold it:

- x0 is the previous cell's output c[k-1] (input 1); x_j is node n_{j-1} (input j + 1); a fisherx edge with
  ``zero`` is an absent edge (``none``), and a node with a single operation gets ``zero`` on c[k-2] as its second.
- Names map where the computations match: none ↔ zero, skip_connect ↔ identity, avg_pool_3x3 ↔ avg_pool_3x3 (both
  3×3, stride 1, padding 1, padding excluded from the average). nor_conv_1x1 and nor_conv_3x3 (ReLU, *full*
  convolution, BatchNorm) have no fisherx counterpart (fisherx's convolutions are separable), and fisherx's
  separable, dilated and 7×1-1×7 convolutions and max pooling have none in NAS-Bench-201: each is refused by name.
- A fisherx node adds exactly two operations, so x3 may have at most two edges other than ``none``; fisherx cells
  that read c[k-2], have other than 3 nodes, or apply two operations to one input are refused.

``from_nb201`` uses the cell for both the normal and the reduction cell; ``to_nb201`` converts one cell (``cell=``).
"""

from __future__ import annotations

import ast
import re
from typing import Any

from .genotype import CellSpec, Genotype, GenotypeError

#: fisherx name → DARTS name (a bijection on the ten operations).
DARTS_NAMES = {
    "zero": "none",
    "identity": "skip_connect",
    "max_pool_3x3": "max_pool_3x3",
    "avg_pool_3x3": "avg_pool_3x3",
    "conv_3x3": "sep_conv_3x3",
    "conv_5x5": "sep_conv_5x5",
    "conv_7x7": "sep_conv_7x7",
    "dil_conv_3x3": "dil_conv_3x3",
    "dil_conv_5x5": "dil_conv_5x5",
    "conv_7x1_1x7": "conv_7x1_1x7",
}
_FROM_DARTS = {v: k for k, v in DARTS_NAMES.items()}

#: NAS-Bench-201 name → fisherx name, where the computations match.
NB201_NAMES = {"none": "zero", "skip_connect": "identity", "avg_pool_3x3": "avg_pool_3x3"}
_TO_NB201 = {v: k for k, v in NB201_NAMES.items()}
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
_NB201_WHY = {
    "nor_conv_1x1": "nor_conv_1x1 (ReLU, full 1×1 convolution, BatchNorm) has no fisherx counterpart",
    "nor_conv_3x3": "nor_conv_3x3 (ReLU, full 3×3 convolution, BatchNorm) has no fisherx counterpart "
    "(fisherx's 3×3 convolution is separable)",
}


class ConversionError(GenotypeError):
    """An architecture cannot be expressed in the other form; the message says what and why."""


# ------------------------------------------------------------------------------------------------------- DARTS


def to_darts(g: Genotype) -> dict:
    """The DARTS form of ``g`` as plain data: ``{"normal": [(op, input), ...], "normal_concat": [2, ...],
    "reduce": [...], "reduce_concat": [...]}`` with DARTS's operation names."""
    out = {}
    for which, cell in (("normal", g.normal), ("reduce", g.reduce)):
        out[which] = [(DARTS_NAMES[op], inp) for node in cell for op, inp in node]
        out[f"{which}_concat"] = list(range(2, 2 + len(cell)))
    return out


def to_darts_text(g: Genotype) -> str:
    """``g`` as the text DARTS prints and its ``genotypes.py`` holds:
    ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4], reduce=[...], reduce_concat=[...])``."""
    d = to_darts(g)
    return (
        "Genotype(" + ", ".join(f"{k}={d[k]!r}" for k in ("normal", "normal_concat", "reduce", "reduce_concat")) + ")"
    )


def from_darts(obj: Any) -> Genotype:
    """A fisherx genotype from a DARTS genotype: its text (``"Genotype(normal=[...], ...)"``, ``range(2, 6)``
    accepted for the concat lists), a mapping with the four keys, or any object with the four attributes (DARTS's own
    namedtuple). Raises :class:`ConversionError` naming what cannot be expressed."""
    if isinstance(obj, str):
        obj = _parse_darts_text(obj)
    elif not isinstance(obj, dict):
        try:
            obj = {k: getattr(obj, k) for k in ("normal", "normal_concat", "reduce", "reduce_concat")}
        except AttributeError as e:
            raise ConversionError(f"not a DARTS genotype: {e}") from None
    missing = {"normal", "normal_concat", "reduce", "reduce_concat"} - set(obj)
    if missing:
        raise ConversionError(
            f"a DARTS genotype needs normal, normal_concat, reduce, reduce_concat; missing {sorted(missing)}"
        )
    cells = {}
    for which in ("normal", "reduce"):
        edges = list(obj[which])
        if len(edges) % 2 or not edges:
            raise ConversionError(
                f"DARTS {which} has {len(edges)} edges; every node takes exactly two, so the list "
                f"needs an even, non-zero length"
            )
        pairs = []
        for e in edges:
            if not isinstance(e, (tuple, list)) or len(e) != 2:
                raise ConversionError(f"DARTS {which}: each edge must be an (operation, input) pair, got {e!r}")
            op, inp = e
            if op not in _FROM_DARTS:
                raise ConversionError(
                    f"DARTS {which}: operation {op!r} has no fisherx counterpart (fisherx has the "
                    f"DARTS operations {', '.join(_FROM_DARTS)})"
                )
            pairs.append((_FROM_DARTS[op], inp))
        n = len(pairs) // 2
        concat = list(obj[f"{which}_concat"])
        if concat != list(range(2, 2 + n)):
            left_out = sorted(set(range(2, 2 + n)) - set(concat))
            raise ConversionError(
                f"DARTS {which}_concat is {concat}, but fisherx cells concatenate all their nodes "
                f"({list(range(2, 2 + n))})" + (f"; states {left_out} would be left out" if left_out else "")
            )
        cells[which] = [pairs[2 * j : 2 * j + 2] for j in range(n)]
    try:
        return Genotype(cells["normal"], cells["reduce"])
    except GenotypeError as e:
        raise ConversionError(f"the DARTS genotype is not a valid cell DAG: {e}") from None


def _parse_darts_text(text: str) -> dict:
    # Parsed with ast, never eval: only literals and range(a, b) are accepted.
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ConversionError(f"not a DARTS genotype text: {e.msg}") from None
    if not isinstance(tree, ast.Call):
        raise ConversionError(
            "a DARTS genotype text looks like Genotype(normal=[...], normal_concat=[...], "
            "reduce=[...], reduce_concat=[...])"
        )
    names = ("normal", "normal_concat", "reduce", "reduce_concat")
    args = dict(zip(names, tree.args, strict=False))  # positional first, the rest may come as keywords
    args.update({kw.arg: kw.value for kw in tree.keywords})
    return {k: _literal(v, k) for k, v in args.items()}


def _literal(node: ast.AST, key: str) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        return list(range(*[_literal(a, key) for a in node.args]))
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ConversionError(
            f"DARTS {key}: only literals and range(...) are understood, got {ast.unparse(node)!r}"
        ) from None


# ------------------------------------------------------------------------------------------------ NAS-Bench-201

_NB201_NODE = re.compile(r"^\|(?:[A-Za-z0-9_]+~\d+\|)+$")


def from_nb201(arch: str) -> Genotype:
    """A fisherx genotype with the cell DAG of the NAS-Bench-201 string ``arch`` (module docstring), used as both the
    normal and the reduction cell. Raises :class:`ConversionError` naming what cannot be expressed."""
    if not isinstance(arch, str):
        raise ConversionError(f"a NAS-Bench-201 architecture is a string, got {type(arch).__name__}")
    parts = arch.strip().split("+")
    if len(parts) != 3 or not all(_NB201_NODE.match(p) for p in parts):
        raise ConversionError(
            f"{arch!r} is not a NAS-Bench-201 string: expected three nodes like |op~0|+|op~0|op~1|+|op~0|op~1|op~2|"
        )
    cell = []
    for j, part in enumerate(parts, start=1):
        edges = [e.split("~") for e in part.strip("|").split("|")]
        inputs = [int(i) for _, i in edges]
        if sorted(inputs) != list(range(j)):
            raise ConversionError(
                f"{arch!r}: node {j} must have one edge from each of nodes 0..{j - 1}, got inputs {inputs}"
            )
        used = []
        for op, i in sorted(((op, int(i)) for op, i in edges), key=lambda e: e[1]):
            if op not in NB201_OPS:
                raise ConversionError(
                    f"{arch!r}: unknown NAS-Bench-201 operation {op!r} (it has {', '.join(NB201_OPS)})"
                )
            if op in _NB201_WHY:
                raise ConversionError(f"{arch!r}: node {j}, edge from node {i}: {_NB201_WHY[op]}")
            if op != "none":
                used.append((NB201_NAMES[op], i + 1))  # x_i is fisherx input i + 1 (x0 = c[k-1])
        if len(used) > 2:
            raise ConversionError(
                f"{arch!r}: node {j} adds {len(used)} operations "
                f"({', '.join(f'{op} on x{i - 1}' for op, i in used)}); a fisherx node adds "
                "exactly two, so at most two of its edges may be other than none"
            )
        while len(used) < 2:  # a missing operation is a zero on the unused input c[k-2]
            used.insert(0, ("zero", 0))
        cell.append(used)
    return Genotype(cell, cell)


def to_nb201(g: Genotype, cell: str = "normal") -> str:
    """The NAS-Bench-201 string of ``g``'s ``cell`` ("normal" or "reduce"; the other cell is not part of the string).
    Raises :class:`ConversionError` naming what cannot be expressed (module docstring)."""
    if cell not in ("normal", "reduce"):
        raise ValueError(f"cell must be 'normal' or 'reduce', got {cell!r}")
    spec: CellSpec = getattr(g, cell)
    if len(spec) != 3:
        raise ConversionError(
            f"the {cell} cell has {len(spec)} nodes; a NAS-Bench-201 cell has exactly 3 (x1, x2, x3) after its input"
        )
    nodes = []
    for j, node in enumerate(spec):
        ops = ["none"] * (j + 1)  # edges from x0 .. x_j into x_{j+1}
        for op, inp in node:
            if op == "zero":
                continue  # an absent edge
            where = f"the {cell} cell's node n{j}"
            if inp == 0:
                raise ConversionError(
                    f"{where} applies {op} to c[k-2]; a NAS-Bench-201 cell has a single input (the previous cell)"
                )
            if op not in _TO_NB201:
                raise ConversionError(
                    f"{where} uses {op}, which has no NAS-Bench-201 counterpart (NAS-Bench-201 has "
                    f"{', '.join(NB201_OPS)}; only none, skip_connect and avg_pool_3x3 compute "
                    "what a fisherx operation does)"
                )
            if ops[inp - 1] != "none":
                raise ConversionError(
                    f"{where} applies two operations to the same input; a NAS-Bench-201 edge holds one"
                )
            ops[inp - 1] = _TO_NB201[op]
        nodes.append("|" + "|".join(f"{op}~{i}" for i, op in enumerate(ops)) + "|")
    return "+".join(nodes)
