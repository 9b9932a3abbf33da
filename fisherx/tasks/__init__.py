"""Tasks of the papers: :class:`Task` definitions, their :class:`TaskData`, and the presets T0–T3 per dataset."""

from __future__ import annotations

from .pixel import PIXEL_PRESETS, PixelTask, PixelTaskData
from .presets import CIFAR100_SUPERCLASSES, PRESETS, PROTOCOLS, preset
from .task import OTHER_LABEL, Task, TaskData
from .user import UserTask

__all__ = [
    "CIFAR100_SUPERCLASSES",
    "OTHER_LABEL",
    "PIXEL_PRESETS",
    "PRESETS",
    "PROTOCOLS",
    "PixelTask",
    "PixelTaskData",
    "Task",
    "TaskData",
    "UserTask",
    "preset",
]
