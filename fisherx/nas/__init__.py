"""Task-aware neural architecture search (docs/nas.md): the cell search space, FUSE, TA-NAS, random search.

- :mod:`~fisherx.nas.ops`, :mod:`~fisherx.nas.cells`, :mod:`~fisherx.nas.network`: the ten operations, the cell DAG,
  the skeleton; :class:`Genotype` an architecture as data; :class:`SearchSpace` the ops/node counts/skeleton.
- :func:`fuse`: FUSE search with per-round checkpoints; :func:`random_search`: the equal-budget baseline; both
  strategies on :mod:`~fisherx.nas.runner`'s shared scaffold (:class:`SearchRun`), returning a :class:`SearchResult`.
- :func:`ta_nas` with a :class:`TaskDictionary` of solved baselines (:func:`add_baseline`); :class:`SearchBudget`
  the sizes of one such pipeline (ε-epochs, the general space's skeleton, FUSE's budget).
- :mod:`~fisherx.nas.formats`: DARTS and NAS-Bench-201 converters; :mod:`~fisherx.nas.determinism`: seeding and
  deterministic kernels; :mod:`~fisherx.nas.cost`: per-stage cost accounting.
"""

from __future__ import annotations

from .determinism import NondeterminismWarning, reproducible
from .formats import ConversionError, from_darts, from_nb201, to_darts, to_darts_text, to_nb201
from .fuse import FuseResult, FuseRound, fuse
from .genotype import Genotype, GenotypeError
from .network import Network
from .ops import OP_NAMES, make_op
from .random_search import random_search
from .runner import SearchResult, SearchRun
from .space import SearchSpace, SearchSpaceError
from .ta_nas import (
    DictionaryEntry,
    SearchBudget,
    TaNasResult,
    TaskDictionary,
    add_baseline,
    ta_nas,
    train_eps_network,
)

__all__ = [
    "ConversionError",
    "DictionaryEntry",
    "FuseResult",
    "FuseRound",
    "Genotype",
    "GenotypeError",
    "Network",
    "NondeterminismWarning",
    "OP_NAMES",
    "SearchBudget",
    "SearchResult",
    "SearchRun",
    "SearchSpace",
    "SearchSpaceError",
    "TaNasResult",
    "TaskDictionary",
    "add_baseline",
    "from_darts",
    "from_nb201",
    "fuse",
    "make_op",
    "random_search",
    "reproducible",
    "ta_nas",
    "to_darts",
    "to_darts_text",
    "to_nb201",
    "train_eps_network",
]
