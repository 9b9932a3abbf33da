"""What the experiment layer needs to know about a metric, looked up by name in the metric table of
:mod:`fisherx.distance` instead of ``metric == "cosine"`` branches.

:func:`kind` is ``"distance"`` (smaller = closer, the closest task is the argmin) or ``"similarity"`` (larger =
closer, argmax); :func:`self_value` is the value of a Fisher against itself (0 for a distance, 1 for cosine);
:func:`value_range` the metric's (low, high); :func:`label` its name in tables and figures.
"""

from __future__ import annotations

import numpy as np

from ..distance import get_metric


def kind(metric: str) -> str:
    """``"distance"`` or ``"similarity"`` for the metric named ``metric``."""
    return get_metric(metric).kind


def is_similarity(metric: str) -> bool:
    return kind(metric) == "similarity"


def self_value(metric: str) -> float:
    """d[b, b]: the metric's value for a Fisher compared with itself."""
    return float(get_metric(metric).self_value)


def value_range(metric: str) -> tuple[float, float]:
    """(low, high) of the metric's values (``inf`` where unbounded): intervals are clipped to it."""
    lo, hi = get_metric(metric).range
    return float(lo), float(hi)


def label(metric: str) -> str:
    """The metric's name in tables and figures ("FTD", "cosine similarity")."""
    m = get_metric(metric)
    return m.label or m.name


def pick_closest(metric: str, nan: bool = False):
    """``np.argmin`` for a distance, ``np.argmax`` for a similarity (``np.nanargmin``/``np.nanargmax`` with nan)."""
    if is_similarity(metric):
        return np.nanargmax if nan else np.argmax
    return np.nanargmin if nan else np.argmin


def worst(metric: str) -> float:
    """The fill value that never wins :func:`pick_closest` (+inf for a distance, −inf for a similarity)."""
    return -np.inf if is_similarity(metric) else np.inf


def as_distance(metric: str, m: np.ndarray) -> np.ndarray:
    """``m`` as dissimilarities for embedding: itself for a distance, ``self_value − m`` for a similarity."""
    return self_value(metric) - m if is_similarity(metric) else m
