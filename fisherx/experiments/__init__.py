"""Experiments over task families: task-distance matrices (``distances``), their trust statistics (``trust``) and
the papers' pipeline end to end (``demo``)."""

from __future__ import annotations

from .distances import TaskDistanceResult, task_distances

__all__ = ["TaskDistanceResult", "task_distances"]
