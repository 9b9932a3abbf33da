"""A task (T, X) of the papers: a dataset, the classes of interest, an optional "anything else" label, balanced
sampling, and train / validation / test splits, all deterministic from a seed (docs/tasks.md)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..data.sources import Source, open_source

OTHER_LABEL = "anything else"

ClassSpec = str | tuple


@dataclass(frozen=True)
class TaskData:
    """A task's tensors: ``train``, ``val`` (held out of the training data) and ``test`` as ``(x, y)`` pairs, with
    ``x`` float32 N×C×H×W (normalised per channel with the source's statistics) and ``y`` int64 labels in
    ``[0, num_classes)``."""

    task: Task
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    class_names: tuple[str, ...]
    in_channels: int
    image_size: int
    origin: str = ""
    label_members: tuple[tuple[str, ...], ...] = field(default=())  # the source classes behind every label

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input sample (C×H×W for images, (D,) for tabular data, (L,) for token sequences)."""
        return tuple(self.train[0].shape[1:])

    def label_counts(self, split: str = "train") -> list[int]:
        """How many samples of ``split`` ("train", "val" or "test") carry each label."""
        y = getattr(self, split)[1]
        return torch.bincount(y, minlength=self.num_classes).tolist()

    def fingerprint(self) -> str:
        """SHA-256 of every split's tensors: what a cache key needs to tell one data set from another."""
        h = hashlib.sha256()
        for x, y in (self.train, self.val, self.test):
            for t in (x, y):
                h.update(str((tuple(t.shape), str(t.dtype))).encode())
                h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class Task:
    """One classification task on a dataset source.

    - ``classes``: the classes of interest, one label each; an entry that is a tuple of class names makes those
      classes one label. ``None`` means every class of the source, one label each.
    - ``other``: add one last label, "anything else", for every class not named in ``classes``.
    - ``balanced``: every label gets the same number of training samples (the smallest label's count, or
      ``max_train_per_label``), each label's samples drawn evenly across the classes it collects.
    - ``max_train_per_label``: cap on training samples per label (quick runs); ``None`` keeps them all.
    - ``val_fraction``: part of each label's training samples held out as ``val``.
    - ``image_size``: resize images to this side length (``None``: the source's own size; image folders: 32).
    - ``data_dir``: where the source's files are when :meth:`load` is given none (a run file's per-task folder);
      not part of :meth:`config` (the data's fingerprint is what identifies it).
    - ``seed``: drives the balanced draw and the validation split. The test split never depends on it: tasks on
      one source share its test images (restricted to the classes they cover).
    - ``test_balanced``: the papers' protocol (``preset(..., protocol="papers")``): the test split too gets the
      same number of samples per label (the smallest label's count), drawn evenly across the classes a label
      collects with a fixed generator (not ``seed``). False (default): the full test split of the classes covered.
    """

    name: str
    source: str = "digits"
    classes: tuple | None = None
    other: bool = False
    balanced: bool = True
    seed: int = 0
    val_fraction: float = 0.1
    max_train_per_label: int | None = None
    image_size: int | None = None
    label_names: tuple | None = None
    data_dir: str | None = None
    test_balanced: bool = False

    def __post_init__(self) -> None:
        if self.classes is not None:
            if isinstance(self.classes, str):
                raise TypeError(
                    f"task {self.name!r}: classes must be a sequence of class names (or of tuples of "
                    f"names), not the string {self.classes!r}"
                )
            norm = tuple(tuple(str(c) for c in e) if isinstance(e, (tuple, list)) else str(e) for e in self.classes)
            if not norm:
                raise ValueError(f"task {self.name!r}: classes is empty; give class names or None for all classes")
            object.__setattr__(self, "classes", norm)
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(str(n) for n in self.label_names))
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"task {self.name!r}: val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.max_train_per_label is not None and self.max_train_per_label < 1:
            raise ValueError(f"task {self.name!r}: max_train_per_label must be >= 1, got {self.max_train_per_label}")
        if self.classes is None and self.other:
            raise ValueError(
                f"task {self.name!r}: other=True needs classes of interest (with classes=None every class "
                "has its own label and nothing is left for 'anything else')"
            )

    @classmethod
    def from_tensors(
        cls, name: str, train=None, test=None, val=None, *, class_names=None, balanced=None, **options
    ) -> Task:
        """A task on the user's own data: ``train``, ``test`` (and optionally ``val``; default: carved from train,
        ``val_fraction`` per label, seeded) as ``(inputs, targets)`` pairs of tensors or numpy arrays.

        Integer targets are labels in [0, len(class_names)) (class names default to "0", "1", ...), and
        ``classes`` / ``other`` / ``balanced`` / ``max_train_per_label`` / ``seed`` cut a class-subset task from
        them exactly as for the presets (``balanced`` defaults to True when ``classes`` is given). Float targets
        make a regression task (train it with loss="mse"). Inputs are taken as they are (no normalisation)."""
        from .user import build

        return build(
            name, {"train": train, "test": test, "val": val}, class_names=class_names, balanced=balanced, **options
        )

    @classmethod
    def from_datasets(cls, name: str, train=None, test=None, val=None, **options) -> Task:
        """:meth:`from_tensors` on one map-style ``torch.utils.data.Dataset`` of (input, target) items per split
        (the items are stacked once, in memory)."""
        from .user import build, materialize

        arrays = {
            s: materialize(d, f"task {name!r}: the {s} dataset")
            for s, d in (("train", train), ("test", test), ("val", val))
        }
        return build(name, arrays, **options)

    @classmethod
    def from_npz(cls, name: str, path, **options) -> Task:
        """:meth:`from_tensors` on a ``.npz`` file holding ``x_train``, ``y_train``, ``x_test``, ``y_test``
        (optionally ``x_val``, ``y_val`` and ``class_names``). The task records the file, so it can be rebuilt
        from its configuration (TA-NAS dictionaries, run files)."""
        from .user import build, read_npz

        arrays, names = read_npz(name, path)
        options.setdefault("class_names", names)
        return build(name, arrays, data_file=path, **options)

    @staticmethod
    def from_config(config: dict) -> Task:
        """Rebuild a task from what :meth:`config` returned (a preset's task, or a user task read from a file)."""
        from .user import from_config

        return from_config(config)

    def config(self) -> dict:
        """The task as plain JSON-able data (for cache keys and results)."""
        d = asdict(self)
        del d["data_dir"]
        d["classes"] = None if self.classes is None else [list(c) if isinstance(c, tuple) else c for c in self.classes]
        d["label_names"] = None if self.label_names is None else list(self.label_names)
        if not self.test_balanced:  # absent when off, so the cache keys of full-split tasks stay as they were
            del d["test_balanced"]
        return d

    def load(self, data_dir=None) -> TaskData:
        """Build the task's splits from its source (files under ``data_dir`` where the source needs them)."""
        src = self._open(data_dir)
        groups, names = self._labels(src)
        label_of = {c: i for i, g in enumerate(groups) for c in g}
        train, test = src.splits(None if self.other or self.classes is None else sorted(label_of))
        if self.other:
            rest = [c for c in range(len(src.class_names)) if c not in label_of]
            groups.append(rest)
            names.append(OTHER_LABEL)
            for c in rest:
                label_of[c] = len(groups) - 1
        if self.label_names is not None:
            if len(self.label_names) != len(groups):
                raise ValueError(
                    f"task {self.name!r}: {len(self.label_names)} label_names for {len(groups)} labels "
                    f"({', '.join(names)})"
                )
            names = list(self.label_names)
        lut = np.full(len(src.class_names), -1, np.int64)
        for c, label in label_of.items():
            lut[c] = label
        rng = np.random.default_rng(self.seed)
        chosen = self._draw(train.y, groups, rng)
        given_val = getattr(src, "val", None)  # a validation split of the user's own: nothing is carved
        val_idx, train_idx = [], []
        for idx in chosen:
            idx = idx[rng.permutation(idx.size)]
            k = int(round(idx.size * self.val_fraction))
            # Keep at least one training sample per label; no carving when the caller gave a validation split.
            k = min(k, idx.size - 1) if idx.size >= 2 and given_val is None else 0
            val_idx.append(idx[:k])
            train_idx.append(idx[k:])
        tr, va = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
        x_tr, y_tr = self._tensor(src, train.x[tr]), torch.from_numpy(lut[train.y[tr]])
        x_va, y_va = self._tensor(src, train.x[va]), torch.from_numpy(lut[train.y[va]])
        if given_val is not None:
            kv = lut[given_val.y] >= 0
            x_va, y_va = self._tensor(src, given_val.x[kv]), torch.from_numpy(lut[given_val.y[kv]])
        keep = lut[test.y] >= 0
        if self.test_balanced:
            keep = _balanced_mask(test.y, groups)
        x_te, y_te = self._tensor(src, test.x[keep]), torch.from_numpy(lut[test.y[keep]])
        for split, y in (("train", y_tr), ("test", y_te)):
            missing = [names[k] for k in range(len(groups)) if not bool((y == k).any())]
            if missing:
                raise ValueError(
                    f"task {self.name!r}: no {split} samples for label(s) {', '.join(missing)} in "
                    f"{src.name} ({src.origin})"
                )
        members = tuple(tuple(src.class_names[c] for c in g) for g in groups)
        return TaskData(
            self,
            (x_tr, y_tr),
            (x_va, y_va),
            (x_te, y_te),
            len(groups),
            tuple(names),
            *channels_and_size(x_tr),
            src.origin,
            members,
        )

    def _open(self, data_dir) -> Source:
        return open_source(self.source, self.data_dir if self.data_dir is not None else data_dir, self.image_size)

    def _labels(self, src: Source) -> tuple[list[list[int]], list[str]]:
        if self.classes is None:
            return [[c] for c in range(len(src.class_names))], list(src.class_names)
        groups, names, seen = [], [], {}
        for entry in self.classes:
            members = [entry] if isinstance(entry, str) else list(entry)
            idx = []
            for m in members:
                i = src.resolve(m)
                if i in seen:
                    raise ValueError(
                        f"task {self.name!r}: class {src.class_names[i]!r} appears in two labels "
                        f"({seen[i]!r} and {m!r})"
                    )
                seen[i] = m
                idx.append(i)
            groups.append(idx)
            names.append(src.class_names[idx[0]] if len(idx) == 1 else "+".join(src.class_names[i] for i in idx))
        if self.other and len(seen) == len(src.class_names):
            raise ValueError(
                f"task {self.name!r}: other=True but the classes of interest cover every class of "
                f"{src.name}, so 'anything else' would be empty"
            )
        return groups, names

    def _draw(self, y: np.ndarray, groups: list[list[int]], rng: np.random.Generator) -> list[np.ndarray]:
        pools = [[np.flatnonzero(y == c) for c in g] for g in groups]
        sizes = [sum(p.size for p in pool) for pool in pools]
        if self.balanced:
            n = min(sizes)
            if self.max_train_per_label is not None:
                n = min(n, self.max_train_per_label)
            quotas = [n] * len(groups)
        else:
            cap = self.max_train_per_label
            quotas = [s if cap is None else min(s, cap) for s in sizes]
        return [_draw_evenly(pool, q, rng) for pool, q in zip(pools, quotas, strict=True)]

    def _tensor(self, src: Source, x: np.ndarray) -> torch.Tensor:
        if getattr(src, "raw", False):  # the user's own inputs (any shape and dtype): taken as they are
            return torch.from_numpy(np.ascontiguousarray(x))
        t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(src.scale)
        mean = torch.tensor(src.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(src.std, dtype=torch.float32).view(1, -1, 1, 1)
        t = (t - mean) / std
        if self.image_size is not None and t.shape[-1] != self.image_size and t.shape[0] > 0:
            t = torch.nn.functional.interpolate(
                t,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=self.image_size < t.shape[-1],
            )
        return t.contiguous()


def channels_and_size(x: torch.Tensor) -> tuple[int, int]:
    """(in_channels, image_size) of N×C×H×W images; for other inputs dim 1 and the last dim (1 for 1-D inputs)."""
    return (int(x.shape[1]), int(x.shape[-1])) if x.dim() >= 2 else (1, 1)


def _draw_evenly(pools: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices spread as evenly as the pools allow (water-filling), each pool's share drawn at random."""
    k = len(pools)
    quota = [0] * k
    active, left = [i for i in range(k) if pools[i].size > 0], n
    while left > 0 and active:
        share, extra = divmod(left, len(active))
        full = [i for i in active if pools[i].size - quota[i] <= share]
        if full:
            for i in full:
                left -= pools[i].size - quota[i]
                quota[i] = pools[i].size
            active = [i for i in active if i not in full]
            continue
        for j, i in enumerate(rng.permutation(active)):
            quota[i] += share + (1 if j < extra else 0)
        left = 0
    picked = [
        np.sort(rng.choice(p, size=q, replace=False)) if q < p.size else p for p, q in zip(pools, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _balanced_mask(y: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """A mask of ``y`` keeping the same number of samples per label (the smallest label's count), each label's
    drawn evenly across its classes; a fixed generator, so every seed of a task sees the same test set."""
    pools = [[np.flatnonzero(y == c) for c in g] for g in groups]
    n = min(sum(p.size for p in pool) for pool in pools)
    rng = np.random.default_rng(0)
    mask = np.zeros(y.shape[0], dtype=bool)
    for pool in pools:
        mask[_draw_evenly(pool, n, rng)] = True
    return mask
