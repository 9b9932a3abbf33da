"""Taskonomy-style pixel-to-pixel tasks from the user's files: one folder per task with (input, target) pairs.

Layout (``ROOT`` is the ``data_dir``)::

    ROOT/<task>/input/<image>.png    ROOT/<task>/target/<image>.png        (split 80/20 with a fixed seed), or
    ROOT/<task>/train/input/...      ROOT/<task>/train/target/...   and the same under ROOT/<task>/test/

An input and its target share a file name (the extension may differ). Images are read like the image-folder
source (RGB, shorter side resized to ``image_size``, default 32, then centre-cropped); a side (all inputs, or all
targets) whose every image is grey (R = G = B) keeps one channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .formats import list_images, read_image

SPLIT_SEED = 20
DEFAULT_SIZE = 32


@dataclass(frozen=True)
class Pairs:
    """uint8 N×C×S×S inputs and targets of one task's train and test splits, and where they came from."""

    train_input: np.ndarray
    train_target: np.ndarray
    test_input: np.ndarray
    test_target: np.ndarray
    origin: str


def task_folders(root) -> list[str]:
    """The task names under ``root``: its sub-folders that hold ``input`` (or ``train/input``), sorted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"taskonomy: {root} is not a folder (expected one sub-folder per task)")
    names = sorted(p.name for p in root.iterdir() if (p / "input").is_dir() or (p / "train" / "input").is_dir())
    if not names:
        raise FileNotFoundError(
            f"taskonomy: {root} holds no task folders (expected ROOT/<task>/input/ and "
            "ROOT/<task>/target/, or ROOT/<task>/train/input/ ...)"
        )
    return names


def _matched(folder: Path) -> tuple[list[Path], list[Path]]:
    ins, tgs = folder / "input", folder / "target"
    for d in (ins, tgs):
        if not d.is_dir():
            raise FileNotFoundError(f"taskonomy: expected a folder {d}")
    inputs = {p.stem: p for p in list_images(ins)}
    targets = {p.stem: p for p in list_images(tgs)}
    if not inputs:
        raise FileNotFoundError(f"taskonomy: {ins} holds no images (looked for .png, .jpg, ...)")
    lonely = sorted(set(inputs) ^ set(targets))
    if lonely:
        raise FileNotFoundError(
            f"taskonomy: in {folder}, {len(lonely)} image(s) have no partner in input/ or "
            f"target/ (e.g. {lonely[0]!r}); every input needs a target of the same name"
        )
    names = sorted(inputs)
    return [inputs[n] for n in names], [targets[n] for n in names]


def _read(files: list[Path], size: int) -> np.ndarray:
    return np.stack([read_image(f, size) for f in files])


def _grey(*arrays: np.ndarray) -> bool:
    return all(bool((a[:, 0] == a[:, 1]).all() and (a[:, 0] == a[:, 2]).all()) for a in arrays if a.size)


def read_pairs(root, task: str, image_size: int | None = None) -> Pairs:
    """The (input, target) images of ``root/<task>`` (see the module docstring for the layout)."""
    folder = Path(root).expanduser() / task
    size = image_size or DEFAULT_SIZE
    if (folder / "train").is_dir():
        tr_in, tr_tg = _matched(folder / "train")
        te_in, te_tg = _matched(folder / "test")
        arrays = [_read(f, size) for f in (tr_in, tr_tg, te_in, te_tg)]
    else:
        fin, ftg = _matched(folder)
        if len(fin) < 2:
            raise ValueError(f"taskonomy: {folder} has {len(fin)} pair(s); a train/test split needs at least 2")
        order = np.random.default_rng([SPLIT_SEED, len(fin)]).permutation(len(fin))
        k = max(1, int(round(len(fin) * 0.2)))
        test, train = sorted(order[:k]), sorted(order[k:])
        x, y = _read(fin, size), _read(ftg, size)
        arrays = [x[train], y[train], x[test], y[test]]
    for side in (0, 1):  # inputs, then targets: one channel when every image of that side is grey
        if _grey(arrays[side], arrays[side + 2]):
            arrays[side], arrays[side + 2] = arrays[side][:, :1], arrays[side + 2][:, :1]
    return Pairs(*(np.ascontiguousarray(a) for a in arrays), origin=str(folder))
