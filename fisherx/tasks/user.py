"""Tasks on the user's own data: tensors or numpy arrays per split, one ``torch.utils.data.Dataset`` per split, or
a ``.npz`` file, optionally cut into the papers' class-subset tasks (classes of interest, an "anything else" label,
balanced sampling) by the same :class:`~fisherx.tasks.Task` machinery the presets use.

A user task's inputs are taken as they are (any shape and dtype: images, tabular rows, token ids); its targets are
integer labels (classification) or floating-point values (regression / autoencoding, ``loss="mse"``). Its
``data_sha256`` is a SHA-256 of every array, so a cache keyed by the task's configuration misses when the data
changes. Only a task read from a file can be rebuilt from its configuration (:meth:`UserTask.rebuild_spec`).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.sources import ArraySource, Source, Split
from .task import Task, TaskData, channels_and_size

SPLITS = ("train", "val", "test")
TARGETS = ("labels", "regression")
NPZ_KEYS = {s: (f"x_{s}", f"y_{s}") for s in SPLITS}


class UserSource(ArraySource):
    """The user's arrays as a source: inputs taken as they are (``raw``), classes named by ``class_names``."""

    raw = True

    def __init__(self, name: str, origin: str, class_names, train: Split, test: Split, val: Split | None):
        Source.__init__(self)
        self.name, self.origin, self.class_names = name, origin, tuple(class_names or ())
        self.train, self.test, self.val = train, test, val
        self.scale, self.mean, self.std = 1.0, (), ()
        self._synonyms: dict[str, list[str]] = {}
        self.superclasses: dict[str, tuple[str, ...]] = {}


def _to_numpy(v, what: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, (list, tuple)):
        return np.asarray(v)
    raise TypeError(f"{what} must be a tensor or a numpy array, got {type(v).__name__}")


def _pair(task: str, split: str, pair) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"task {task!r}: {split} must be an (inputs, targets) pair, got {type(pair).__name__}")
    x, y = _to_numpy(pair[0], f"task {task!r}: {split} inputs"), _to_numpy(pair[1], f"task {task!r}: {split} targets")
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"task {task!r}: the {split} split has inputs of shape {x.shape} and targets of shape "
            f"{y.shape}; both need the samples along dim 0, as many of each"
        )
    if x.shape[0] == 0:
        raise ValueError(f"task {task!r}: the {split} split is empty")
    return x, y


def _hash(arrays: dict, class_names) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        for a in arrays.get(split) or ():
            a = np.ascontiguousarray(a)
            h.update(f"{split}{a.shape}{a.dtype.str}".encode())
            h.update(a.tobytes())
    h.update(repr(tuple(class_names or ())).encode())
    return h.hexdigest()


def _check_targets(name: str, arrays: dict, class_names) -> tuple[str, tuple]:
    """("labels" | "regression", class names); a clear error for labels out of range or mixed target kinds."""
    kinds = {s: np.issubdtype(p[1].dtype, np.floating) for s, p in arrays.items() if p is not None}
    if len(set(kinds.values())) > 1:
        desc = ", ".join(f"{s}: {arrays[s][1].dtype}" for s in kinds)
        raise TypeError(f"task {name!r}: the targets are labels in some splits and floats in others ({desc})")
    if next(iter(kinds.values())):
        if class_names is not None:
            raise ValueError(f"task {name!r}: class_names given but the targets are floats (regression)")
        return "regression", ()
    for s, (_, y) in ((s, p) for s, p in arrays.items() if p is not None):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise TypeError(
                f"task {name!r}: {s} labels must be a 1-D integer array (or float targets for "
                f"regression), got {y.dtype} of shape {y.shape}"
            )
    top = max(int(p[1].max()) for p in arrays.values() if p is not None)
    low = min(int(p[1].min()) for p in arrays.values() if p is not None)
    count = len(class_names) if class_names is not None else top + 1
    if low < 0 or top >= count:
        s = next(s for s, p in arrays.items() if p is not None and (p[1].min() < 0 or p[1].max() >= count))
        lo, hi = int(arrays[s][1].min()), int(arrays[s][1].max())
        raise ValueError(
            f"task {name!r}: {s} label out of range: labels span {lo}..{hi} but must lie in "
            f"[0, {count})" + (f" (the {count} class_names)" if class_names is not None else "")
        )
    names = tuple(str(c) for c in class_names) if class_names is not None else tuple(str(i) for i in range(count))
    return "labels", names


@dataclass(frozen=True)
class UserTask(Task):
    """A :class:`Task` on the user's own arrays (build it with :meth:`Task.from_tensors`,
    :meth:`Task.from_datasets` or :meth:`Task.from_npz`). ``classes``, ``other``, ``balanced`` and the rest mean
    what they mean for a preset's task, with class names ``class_names`` (default "0", "1", ... for the labels)."""

    source: str = "user"
    class_names: tuple | None = None
    target: str = "labels"
    data_file: str | None = None
    data_sha256: str = ""
    arrays: Any = field(default=None, compare=False, repr=False)

    def config(self) -> dict:
        """The task as JSON-able data: its definition, the data's SHA-256 and the file it came from (if any)."""
        d = Task.config(replace_arrays(self))
        del d["arrays"]
        d["class_names"] = None if self.class_names is None else list(self.class_names)
        return d

    def rebuild_spec(self) -> dict:
        """What rebuilds this task elsewhere (a TA-NAS dictionary, a run file): its configuration, which names its
        data file. Refuses a task built from in-memory data, which no configuration can bring back."""
        if self.data_file is None:
            raise ValueError(
                f"task {self.name!r} was built from in-memory data, which cannot be rebuilt from a "
                "record; save its splits with numpy.savez(path, x_train=..., y_train=..., x_test=..., "
                f"y_test=...) and pass fisherx.Task.from_npz({self.name!r}, path, ...) instead"
            )
        return self.config()

    def _open(self, data_dir) -> UserSource:
        arrays = self.arrays if self.arrays is not None else read_npz(self.name, self.data_file)[0]
        tr, te, va = (None if arrays.get(s) is None else Split(*arrays[s]) for s in ("train", "test", "val"))
        origin = self.data_file or "in-memory arrays"
        return UserSource(self.name, origin, self.class_names, tr, te, va)

    def load(self, data_dir=None) -> TaskData:
        """The task's splits: the class-subset recipe on the user's labels, or the regression targets as given
        (validation carved from train, seeded, when no val split was given)."""
        if self.target == "labels":
            return super().load(data_dir)
        src = self._open(data_dir)
        (x, y), val = (src.train.x, src.train.y), src.val
        if val is None:
            order = np.random.default_rng(self.seed).permutation(x.shape[0])
            k = min(int(round(x.shape[0] * self.val_fraction)), x.shape[0] - 1)
            va, tr = np.sort(order[:k]), np.sort(order[k:])
            val, x, y = Split(x[va], y[va]), x[tr], y[tr]
        if self.max_train_per_label is not None:
            x, y = x[: self.max_train_per_label], y[: self.max_train_per_label]
        width = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
        x_tr = _tensor(x)
        return TaskData(
            self,
            (x_tr, _tensor(y)),
            (_tensor(val.x), _tensor(val.y)),
            (_tensor(src.test.x), _tensor(src.test.y)),
            width,
            (),
            *channels_and_size(x_tr),
            src.origin,
            (),
        )


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def replace_arrays(task: UserTask) -> UserTask:
    """The same task without its arrays (so that dataclass copies and comparisons stay cheap)."""
    return replace(task, arrays=None)


def read_npz(name: str, path) -> tuple[dict, tuple | None]:
    if path is None:
        raise ValueError(f"task {name!r} has neither arrays nor a data file")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"task {name!r}: data file {p} not found")
    with np.load(p, allow_pickle=False) as z:
        keys = set(z.files)
        arrays = {}
        for s, (kx, ky) in NPZ_KEYS.items():
            if kx in keys and ky in keys:
                arrays[s] = (z[kx], z[ky])
            elif kx in keys or ky in keys or s != "val":
                missing = [k for k in (kx, ky) if k not in keys]
                raise ValueError(
                    f"task {name!r}: {p} lacks {', '.join(missing)} (the {s} split; it has {', '.join(sorted(keys))})"
                )
        names = tuple(str(n) for n in z["class_names"]) if "class_names" in keys else None
    return arrays, names


def build(name: str, arrays: dict, *, class_names=None, data_file=None, balanced=None, **options) -> UserTask:
    """A :class:`UserTask` from per-split (x, y) numpy arrays (``val`` may be None: carved from train, seeded)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task needs a non-empty name, got {name!r}")
    for s in ("train", "test"):
        if arrays.get(s) is None:
            raise ValueError(f"task {name!r}: the {s} split is missing; pass {s}=(inputs, targets)")
    arrays = {s: None if arrays.get(s) is None else _pair(name, s, arrays[s]) for s in SPLITS}
    shapes = {s: p[0].shape[1:] for s, p in arrays.items() if p is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"task {name!r}: the splits' inputs differ in shape: "
            + ", ".join(f"{s} {tuple(v)}" for s, v in shapes.items())
        )
    target, names = _check_targets(name, arrays, class_names)
    if target == "regression" and (options.get("classes") is not None or options.get("other")):
        raise ValueError(f"task {name!r}: classes/other need integer labels; the targets are floats (regression)")
    if balanced is None:  # the papers' choice: balanced class-subset tasks, the whole training set otherwise
        balanced = options.get("classes") is not None
    return UserTask(
        name,
        balanced=balanced,
        class_names=names if target == "labels" else None,
        target=target,
        data_file=None if data_file is None else str(Path(data_file).resolve()),
        data_sha256=_hash(arrays, names),
        arrays=arrays,
        **options,
    )


def materialize(ds, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a map-style Dataset of (input, target) items into two tensors."""
    from torch.utils.data import Dataset, default_collate

    if ds is None:
        return None
    if not isinstance(ds, Dataset) or not hasattr(ds, "__len__"):
        raise TypeError(f"{what} must be a map-style torch.utils.data.Dataset (with __len__), got {type(ds).__name__}")
    items = [ds[i] for i in range(len(ds))]
    if not items:
        raise ValueError(f"{what} is empty")
    first = items[0]
    if not isinstance(first, (tuple, list)) or len(first) != 2:
        raise TypeError(f"{what}: item 0 is a {type(first).__name__}, not an (input, target) pair")
    x, y = default_collate(items)
    return x, y


def from_config(cfg: dict) -> Task:
    """Rebuild a task from :meth:`Task.config` (a preset task, or a user task read from a file)."""
    cfg = dict(cfg)
    if cfg.get("source") != "user":
        keep = {k: v for k, v in cfg.items() if k in Task.__dataclass_fields__}
        for k in ("classes", "label_names"):
            if keep.get(k) is not None:
                keep[k] = tuple(tuple(c) if isinstance(c, list) else c for c in keep[k])
        return Task(**keep)
    if cfg.get("data_file") is None:
        raise ValueError(
            f"task {cfg.get('name')!r} was recorded without a data file (it was built from in-memory "
            "data); pass the task itself (fisherx.Task.from_npz or from_tensors)"
        )
    arrays, names = read_npz(cfg["name"], cfg["data_file"])
    opts = {
        k: cfg[k]
        for k in ("classes", "other", "seed", "val_fraction", "max_train_per_label", "label_names")
        if cfg.get(k) is not None
    }
    if opts.get("classes") is not None:
        opts["classes"] = tuple(tuple(c) if isinstance(c, list) else c for c in opts["classes"])
    task = build(
        cfg["name"],
        arrays,
        class_names=cfg.get("class_names") or names,
        data_file=cfg["data_file"],
        balanced=cfg.get("balanced"),
        **opts,
    )
    if cfg.get("data_sha256") and task.data_sha256 != cfg["data_sha256"]:
        warnings.warn(
            f"task {task.name!r}: {cfg['data_file']} has changed since the task was recorded (SHA-256 "
            "differs); using the file as it is now",
            stacklevel=2,
        )
    return task
