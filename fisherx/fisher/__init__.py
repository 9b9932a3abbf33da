"""The Fisher engine: :func:`fisher_diag` and its result :class:`FisherDiag`.

Per-layer rules live in :mod:`fisherx.fisher.rules`, one small file per layer family; add a layer with
:func:`register_rule`.
"""

from .engine import fisher_diag
from .result import FisherDiag
from .rules import register_rule

__all__ = ["FisherDiag", "fisher_diag", "register_rule"]
