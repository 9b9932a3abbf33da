"""fisherx: Fisher information, Fisher Task Distance and task-aware architecture search for PyTorch."""
from __future__ import annotations

from ._ops import build_info
from .distance import distance, distance_column, ftd

__version__ = build_info()["version"]

__all__ = ["__version__", "build_info", "distance", "distance_column", "ftd"]
