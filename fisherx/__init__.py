"""fisherx: Fisher information, Fisher Task Distance and task-aware architecture search for PyTorch."""
from __future__ import annotations

from ._ops import build_info
from .distance import distance, distance_column, ftd
from .fisher import FisherDiag, fisher_diag
from . import experiments, io, models, tasks  # noqa: F401  (fisherx.tasks.Task, fisherx.models.build, fisherx.models.train)
from . import nas  # noqa: F401  (fisherx.nas.fuse, fisherx.nas.ta_nas, fisherx.nas.Genotype, ...)
from . import transfer  # noqa: F401  (fisherx.transfer.choose_source, fisherx.transfer.transfer_affinity, ...)
from .experiments import TaskDistanceResult, task_distances
from .tasks import Task, TaskData

__version__ = build_info()["version"]

__all__ = ["__version__", "build_info", "distance", "distance_column", "ftd", "FisherDiag", "fisher_diag",
           "Task", "TaskData", "TaskDistanceResult", "experiments", "io", "models", "nas", "task_distances", "tasks"]
