"""Task-aware neural architecture search (DESIGN §5): the cell search space, FUSE, TA-NAS, random search."""
from __future__ import annotations

from .genotype import Genotype, GenotypeError
from .network import Network
from .ops import OP_NAMES, make_op
from .space import SearchSpace, SearchSpaceError

__all__ = ["Genotype", "GenotypeError", "Network", "OP_NAMES", "SearchSpace", "SearchSpaceError", "make_op"]
