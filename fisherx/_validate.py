"""Range checks for the numbers that enter the Python API (and the command line, which calls the same helpers).

Each check returns the value normalised (an int as int, a float as float) or raises ``ValueError`` naming the
argument, the value and the range, so a bad setting fails before any work rather than deep inside a run.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


def count(name: str, value, minimum: int = 1) -> int:
    """An integer ≥ ``minimum`` (epochs, batch sizes, sample counts, replicates); bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def positive(name: str, value) -> float:
    """A finite real number > 0 (learning rates, variances)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def epsilon(value, name: str = "epsilon") -> float | None:
    """ε of an ε-approximation network (accuracy ≥ 1 − ε): None (no check) or a number in [0, 1)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be None or in [0, 1) (a network must reach accuracy 1 − {name}), got {value!r}")
    return float(value)


def seeds(values: Iterable, name: str = "seeds") -> list[int]:
    """Distinct integer seeds, at least one: a repeated seed would be counted as an independent draw."""
    out = []
    for s in values:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise ValueError(f"{name} must be integers, got {s!r}")
        out.append(int(s))
    if not out:
        raise ValueError(f"{name} must hold at least one seed")
    dup = sorted({s for s in out if out.count(s) > 1})
    if dup:
        raise ValueError(
            f"{name} repeats {', '.join(map(str, dup))}: each seed must appear once (a repeated seed "
            "gives the same network twice, not an independent draw)"
        )
    return out
