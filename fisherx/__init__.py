"""fisherx: Fisher information, Fisher Task Distance and task-aware architecture search for PyTorch."""

from __future__ import annotations

from . import (  # noqa: F401  (fisherx.tasks.Task, fisherx.models.build, fisherx.models.train)
    experiments,
    io,
    models,
    nas,  # noqa: F401  (fisherx.nas.fuse, fisherx.nas.ta_nas, fisherx.nas.Genotype, ...)
    tasks,
    transfer,  # noqa: F401  (fisherx.transfer.choose_source, fisherx.transfer.transfer_affinity, ...)
)
from ._ops import build_info
from .distance import distance, distance_column, distance_matrix, ftd
from .experiments import TaskDistanceResult, task_distances
from .fisher import FisherDiag, fisher_diag
from .tasks import Task, TaskData

__version__ = build_info()["version"]

__all__ = [
    "__version__",
    "build_info",
    "distance",
    "distance_column",
    "distance_matrix",
    "ftd",
    "FisherDiag",
    "fisher_diag",
    "Task",
    "TaskData",
    "TaskDistanceResult",
    "experiments",
    "io",
    "models",
    "nas",
    "task_distances",
    "tasks",
]
