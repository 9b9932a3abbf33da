"""Task-aware neural architecture search (DESIGN §5): the cell search space, FUSE, TA-NAS, random search."""
from __future__ import annotations

from .fuse import FuseResult, FuseRound, fuse
from .genotype import Genotype, GenotypeError
from .network import Network
from .ops import OP_NAMES, make_op
from .random_search import random_search
from .space import SearchSpace, SearchSpaceError

__all__ = ["FuseResult", "FuseRound", "Genotype", "GenotypeError", "Network", "OP_NAMES", "SearchSpace",
           "SearchSpaceError", "fuse", "make_op", "random_search"]
