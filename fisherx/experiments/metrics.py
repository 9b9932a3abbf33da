"""What the experiment layer needs to know about a metric, looked up by name instead of ``metric == "cosine"``.

:func:`kind` is ``"distance"`` (smaller = closer, the closest task is the argmin) or ``"similarity"`` (larger =
closer, argmax); :func:`self_value` is the value of a Fisher against itself (0 for a distance, 1 for cosine).
Both come from the metric table of :mod:`fisherx.distance` (``get_metric(name).kind`` / ``.self_value``) where it
has one; the fallback below describes the three built-in metrics of a ``distance`` module without the table.
"""
from __future__ import annotations

import numpy as np

from .. import distance as _distance

_BUILT_IN_SIMILARITIES = ("cosine",)  # only used when fisherx.distance has no metric table


def kind(metric: str) -> str:
    """``"distance"`` or ``"similarity"`` for the metric named ``metric``."""
    table = getattr(_distance, "get_metric", None)
    if table is not None:
        return table(metric).kind
    return "similarity" if metric in _BUILT_IN_SIMILARITIES else "distance"


def is_similarity(metric: str) -> bool:
    return kind(metric) == "similarity"


def self_value(metric: str) -> float:
    """d[b, b]: the metric's value for a Fisher compared with itself."""
    table = getattr(_distance, "get_metric", None)
    if table is not None:
        return float(table(metric).self_value)
    return 1.0 if is_similarity(metric) else 0.0


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
