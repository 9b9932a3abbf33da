"""Search spaces: which operations a cell may use, how many nodes it has, and the skeleton it is built on.

The **general space** (the papers' space for baseline tasks) has all ten operations and cells of 3 or 4 nodes. A
**task's space** is derived from its best cells (docs/nas.md): the operations they use and their node counts, on the
same skeleton. Sampling draws, for each of the normal and reduction cells, a node count n from the space and for
each node j two *distinct* inputs from {0, …, 1 + j} (an edge twice from the same input is the same as one edge
with a wider op) and an operation for each from the space's list, uniformly, from a caller-given
``torch.Generator`` only (no global RNG), so a seed fixes the sequence of architectures.

Number of distinct genotypes: ``cells(space)²`` with ``cells = Σ_n Π_{j<n} C(2+j, 2)·m²`` for m operations.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import network as _network
from . import ops as _ops
from .genotype import Genotype, GenotypeError, check_opset
from .ops import OP_NAMES

SPACE_FORMAT = "fisherx.search_space"
SPACE_VERSION = 2
_READABLE_VERSIONS = (1, 2)


class SearchSpaceError(ValueError):
    """An invalid search space, or a genotype outside a space."""


def _canonical_ops(ops: Iterable[str]) -> tuple[str, ...]:
    ops = list(ops)
    unknown = [o for o in ops if o not in _ops.OP_NAMES]
    if unknown:
        raise SearchSpaceError(f"unknown operation(s) {unknown}; the operations are {', '.join(_ops.OP_NAMES)}")
    if not ops:
        raise SearchSpaceError("a search space needs at least one operation")
    return tuple(o for o in _ops.OP_NAMES if o in set(ops))


@dataclass(frozen=True)
class SearchSpace:
    """Operations allowed, node counts allowed, and the skeleton (``width``, ``depth``, ``stem_multiplier``)."""

    ops: tuple[str, ...] = OP_NAMES
    nodes: tuple[int, ...] = (3, 4)
    width: int = 16
    depth: int = 5
    stem_multiplier: int = 3
    name: str = field(default="general", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "ops", _canonical_ops(self.ops))
        nodes = sorted(set(self.nodes))
        if not nodes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in nodes):
            raise SearchSpaceError(f"node counts must be positive integers, got {list(self.nodes)}")
        object.__setattr__(self, "nodes", tuple(nodes))
        for k in ("width", "depth", "stem_multiplier"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SearchSpaceError(f"{k} must be a positive integer, got {v!r}")
        if self.width % 2:
            raise SearchSpaceError(f"width must be even (the factorised reduce splits channels), got {self.width}")

    # --------------------------------------------------------------------------------------- constructors
    @classmethod
    def general(cls, width: int = 16, depth: int = 5, stem_multiplier: int = 3) -> SearchSpace:
        """All ten operations, cells of 3 or 4 nodes."""
        return cls(_ops.OP_NAMES, (3, 4), width, depth, stem_multiplier, name="general")

    @classmethod
    def from_genotypes(
        cls,
        best: Genotype | Iterable[Genotype],
        width: int | None = None,
        depth: int | None = None,
        stem_multiplier: int | None = None,
        base: SearchSpace | None = None,
        name: str = "derived",
    ) -> SearchSpace:
        """The space of a task's best cells: the union of their operations and of their cells' node counts.

        The skeleton comes from ``base`` (default: the general space's) unless given explicitly.
        """
        gs = [best] if isinstance(best, Genotype) else list(best)
        if not gs or not all(isinstance(g, Genotype) for g in gs):
            raise SearchSpaceError("from_genotypes needs one or more Genotype objects")
        base = base or cls.general()
        ops = set().union(*(g.ops() for g in gs))
        nodes = {len(c) for g in gs for c in (g.normal, g.reduce)}
        return cls(
            tuple(ops),
            tuple(nodes),
            width if width is not None else base.width,
            depth if depth is not None else base.depth,
            stem_multiplier if stem_multiplier is not None else base.stem_multiplier,
            name=name,
        )

    # --------------------------------------------------------------------------------------- membership
    def violations(self, g: Genotype) -> list[str]:
        """Why ``g`` is not in this space (empty when it is)."""
        out = []
        extra = sorted(g.ops() - set(self.ops), key=_ops.OP_NAMES.index)
        if extra:
            out.append(f"uses operation(s) {', '.join(extra)} outside the space ({', '.join(self.ops)})")
        for which, cell in (("normal", g.normal), ("reduce", g.reduce)):
            if len(cell) not in self.nodes:
                out.append(f"its {which} cell has {len(cell)} nodes; the space allows {list(self.nodes)}")
        return out

    def __contains__(self, g: object) -> bool:
        return isinstance(g, Genotype) and not self.violations(g)

    def check(self, g: Genotype) -> Genotype:
        v = self.violations(g)
        if v:
            raise SearchSpaceError(f"genotype not in the {self.name} space: {'; '.join(v)}")
        return g

    # ------------------------------------------------------------------------------------------ sampling
    def sample(self, rng: torch.Generator) -> Genotype:
        """One genotype drawn uniformly per choice (see the module docstring), using only ``rng``."""
        if not isinstance(rng, torch.Generator):
            raise TypeError(f"rng must be a torch.Generator (seeded by the caller), got {type(rng).__name__}")

        def pick(k: int) -> int:
            return int(torch.randint(k, (1,), generator=rng))

        def cell():
            n = self.nodes[pick(len(self.nodes))]
            nodes = []
            for j in range(n):
                a = pick(2 + j)
                b = pick(1 + j)
                b = b + 1 if b >= a else b  # distinct from a
                a, b = min(a, b), max(a, b)
                nodes.append(((self.ops[pick(len(self.ops))], a), (self.ops[pick(len(self.ops))], b)))
            return nodes

        normal = cell()
        reduce = cell()
        return Genotype(normal, reduce)

    def num_cells(self) -> int:
        m = len(self.ops)
        return sum(math.prod(math.comb(2 + j, 2) * m * m for j in range(n)) for n in self.nodes)

    def size(self) -> int:
        """Number of distinct genotypes :meth:`sample` can return."""
        return self.num_cells() ** 2

    # ------------------------------------------------------------------------------------------- networks
    def build(self, g: Genotype, in_channels: int, num_classes: int):
        """The network of ``g`` on this space's skeleton."""
        return _network.build(
            g, in_channels, num_classes, width=self.width, depth=self.depth, stem_multiplier=self.stem_multiplier
        )

    def num_params(self, g: Genotype, in_channels: int, num_classes: int) -> int:
        return _network.num_params(
            g, in_channels, num_classes, width=self.width, depth=self.depth, stem_multiplier=self.stem_multiplier
        )

    # ---------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        """The JSON-able form (version 2): the operation set, the space's definition, and its :meth:`fingerprint`
        as ``hash``, which :meth:`from_dict` checks."""
        d = self._definition()
        return {**d, "name": self.name, "hash": _hash(d)}

    def _definition(self) -> dict:
        # Everything that defines the space (not its display name): what the hash covers.
        return {
            "format": SPACE_FORMAT,
            "version": SPACE_VERSION,
            "opset": _ops.opset_record(),
            "ops": list(self.ops),
            "nodes": list(self.nodes),
            "width": self.width,
            "depth": self.depth,
            "stem_multiplier": self.stem_multiplier,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def fingerprint(self) -> str:
        """SHA-256 (hex, first 16) of everything that defines the space (operation set included, not its display
        name)."""
        return _hash(self._definition())

    @classmethod
    def from_dict(cls, d: Any, source: str = "search space") -> SearchSpace:
        """A space from :meth:`to_dict`'s form (version 1 or 2); a version-2 ``hash`` that does not match the
        definition (an edited or damaged file) is refused."""
        if not isinstance(d, dict) or d.get("format") != SPACE_FORMAT:
            raise SearchSpaceError(
                f"{source}: not a fisherx search space (format "
                f"{d.get('format') if isinstance(d, dict) else type(d).__name__!r})"
            )
        if d.get("version") not in _READABLE_VERSIONS:
            raise SearchSpaceError(f"{source}: search space version {d.get('version')!r} is not supported")
        if d["version"] >= 2:
            try:
                check_opset(d.get("opset"), source)
            except GenotypeError as e:
                raise SearchSpaceError(str(e)) from None
        try:
            space = cls(
                tuple(d["ops"]),
                tuple(d["nodes"]),
                d["width"],
                d["depth"],
                d["stem_multiplier"],
                name=d.get("name", "derived"),
            )
        except KeyError as e:
            raise SearchSpaceError(f"{source}: missing key {e}") from None
        except SearchSpaceError as e:
            raise SearchSpaceError(f"{source}: {e}") from None
        # The hash covers the definition as written, with the operation set of its time: operations added since
        # change the fingerprint of new files, never the validity of old ones.
        recorded = _hash({k: d.get(k) for k in space._definition()})
        if d["version"] >= 2 and d.get("hash") != recorded:
            raise SearchSpaceError(
                f"{source}: the recorded hash {d.get('hash')!r} does not match the space's "
                f"definition ({recorded}): the file was edited or damaged"
            )
        return space

    @classmethod
    def from_json(cls, text: str, source: str = "search space") -> SearchSpace:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SearchSpaceError(f"{source}: not valid JSON ({e})") from None
        return cls.from_dict(d, source)

    def __str__(self) -> str:
        return (
            f"{self.name} space: ops {{{', '.join(self.ops)}}}, {'/'.join(map(str, self.nodes))} nodes, "
            f"width {self.width}, depth {self.depth}"
        )


def _hash(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]
