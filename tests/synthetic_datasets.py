"""Small files in the real on-disk formats (MNIST IDX, CIFAR python batches, image folders), written by the tests.

Every image carries its source class in pixel (0, 0, 0) as ``class_id * STEP`` (image folders: the whole image is
one grey level), so a test can read back which source class a task sample came from.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

STEP = 2


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _images(counts: list[int], shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c, np.int64) for c, n in enumerate(counts)])
    y = y[rng.permutation(y.size)]
    x = rng.integers(0, 256, size=(y.size, *shape), dtype=np.uint8)
    x.reshape(y.size, -1)[:, 0] = (y * STEP).astype(np.uint8)
    return x, y


def write_mnist(folder: Path, train_counts: list[int], test_counts: list[int], gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, counts, seed in (("train", train_counts, 1), ("t10k", test_counts, 2)):
        x, y = _images(counts, (28, 28), seed)
        for kind, arr, dims in (("images", x, 3), ("labels", y, 1)):
            name = f"{prefix}-{kind}-idx{dims}-ubyte"
            data = idx_bytes(arr)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dump(path: Path, obj: dict, protocol: int) -> None:
    # CIFAR batches are pickles by nature; the tests write them the way the originals are written.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(folder: Path, per_class_train: int = 6, per_class_test: int = 3) -> Path:
    folder = folder / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES]}, 2)
    x, y = _images([per_class_train] * 10, (3, 32, 32), 3)
    for i, part in enumerate(np.array_split(np.arange(y.size), 5)):
        _dump(
            folder / f"data_batch_{i + 1}",
            {b"data": x[part].reshape(-1, 3072), b"labels": y[part].tolist()},
            2 if i % 2 else 4,
        )
    xt, yt = _images([per_class_test] * 10, (3, 32, 32), 4)
    _dump(folder / "test_batch", {"data": xt.reshape(-1, 3072), "labels": yt.tolist()}, 5)
    return folder.parent


def cifar100_names() -> tuple[list[str], list[str], dict[int, int]]:
    """100 fine names (the papers' 20 real ones first), 20 coarse names and the fine → coarse map."""
    from fisherx.tasks import CIFAR100_SUPERCLASSES

    fine, coarse, to_coarse = [], [], {}
    for ci, (cname, members) in enumerate(CIFAR100_SUPERCLASSES.items()):
        coarse.append(cname)
        for m in members:
            to_coarse[len(fine)] = ci
            fine.append(m)
    while len(coarse) < 20:
        coarse.append(f"coarse_{len(coarse)}")
    while len(fine) < 100:
        to_coarse[len(fine)] = 4 + (len(fine) - 20) // 5
        fine.append(f"fine_{len(fine)}")
    return fine, coarse, to_coarse


def write_cifar100(folder: Path, per_class_train: int = 3, per_class_test: int = 1) -> Path:
    folder = folder / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine, coarse, to_coarse = cifar100_names()
    _dump(folder / "meta", {"fine_label_names": fine, "coarse_label_names": coarse}, 4)
    for name, n, seed in (("train", per_class_train, 5), ("test", per_class_test, 6)):
        x, y = _images([n] * 100, (3, 32, 32), seed)
        _dump(
            folder / name,
            {
                b"data": x.reshape(-1, 3072),
                b"fine_labels": y.tolist(),
                b"coarse_labels": [to_coarse[int(c)] for c in y],
            },
            2,
        )
    return folder.parent


def write_imagefolder(
    root: Path, classes: list[str], n_train: int = 4, n_test: int = 2, wnids: bool = True, size: int = 20
) -> Path:
    """train/ and val/ with one folder per class (WordNet-style ids plus LOC_synset_mapping.txt when ``wnids``)."""
    from PIL import Image

    lines = []
    for c, name in enumerate(classes):
        folder_name = f"n{c:08d}" if wnids else name
        lines.append(f"{folder_name} {name}, synonym {c}")
        for split, n in (("train", n_train), ("val", n_test)):
            d = root / split / folder_name
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                Image.new("RGB", (size + k, size), (c * STEP, c * STEP, c * STEP)).save(d / f"img_{k}.png")
    if wnids:
        (root / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")
    return root


def source_class(x_norm, mean: float, std: float, scale: float = 255.0) -> np.ndarray:
    """Read back the source class encoded in pixel (0, 0, 0) of normalised images."""
    v = (x_norm[:, 0, 0, 0].double() * std + mean) * scale
    return np.rint(v.numpy() / STEP).astype(np.int64)
