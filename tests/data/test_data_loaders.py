"""Dataset loaders on small files in the real formats, and their errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from synthetic_datasets import (
    CIFAR10_NAMES,
    STEP,
    cifar100_names,
    idx_bytes,
    write_cifar10,
    write_cifar100,
    write_imagefolder,
    write_mnist,
)

from fisherx.data import open_source, read_cifar_pickle, read_idx
from fisherx.data.sources import ImageFolderSource, load_cifar10, load_cifar100, load_mnist


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    write_mnist(tmp_path / "MNIST" / "raw", [3] * 10, [2] * 10, gz=gz)
    src = load_mnist(tmp_path)  # finds MNIST/raw below the folder given
    assert src.train.x.shape == (30, 1, 28, 28) and src.train.x.dtype == np.uint8
    assert src.test.x.shape == (20, 1, 28, 28)
    assert np.bincount(src.train.y).tolist() == [3] * 10
    assert (src.train.x[:, 0, 0, 0] == src.train.y * STEP).all()  # images and labels stay paired
    assert src.class_names == tuple(str(i) for i in range(10)) and src.resolve("7") == 7


def test_idx_reader_checks_header_and_size(tmp_path):
    p = tmp_path / "a"
    p.write_bytes(idx_bytes(np.zeros((2, 3), np.uint8)))
    assert read_idx(p).shape == (2, 3)
    p.write_bytes(idx_bytes(np.zeros((2, 3), np.uint8))[:-1])
    with pytest.raises(ValueError, match=r"holds 5 data bytes; its header \(2, 3\)"):
        read_idx(p)
    p.write_bytes(b"PK\x03\x04" + bytes(10))
    with pytest.raises(ValueError, match="is not an IDX file"):
        read_idx(p)


def test_mnist_errors_say_what_was_expected_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*t10k-labels-idx1-ubyte.*in .*MNIST"):
        load_mnist(tmp_path)
    write_mnist(tmp_path, [2] * 10, [1] * 10)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: expected 10 labels"):
        load_mnist(tmp_path)


def test_cifar10_batches(tmp_path):
    root = write_cifar10(tmp_path, per_class_train=4, per_class_test=2)
    src = load_cifar10(root)
    assert src.class_names == tuple(CIFAR10_NAMES)
    assert src.train.x.shape == (40, 3, 32, 32) and src.test.x.shape == (20, 3, 32, 32)
    assert (src.train.x[:, 0, 0, 0] == src.train.y * STEP).all()
    assert src.resolve("Automobile") == 1


def test_cifar100_files_and_superclasses(tmp_path):
    root = write_cifar100(tmp_path, per_class_train=2, per_class_test=1)
    src = load_cifar100(root)
    fine, coarse, _ = cifar100_names()
    assert src.class_names == tuple(fine) and src.train.x.shape == (200, 3, 32, 32)
    assert src.superclasses["vehicles_1"] == tuple(sorted(["bicycle", "bus", "motorcycle", "pickup_truck", "train"]))
    assert src.resolve("pickup truck") == fine.index("pickup_truck")


def test_cifar_unpickler_refuses_anything_but_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(ValueError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        read_cifar_pickle(p)
    p.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a pickled dict"):
        read_cifar_pickle(p)


def test_cifar_errors_say_what_was_expected_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_batch_1.*batches.meta in .*cifar-10-batches-py"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_cifar100(None)
    root = write_cifar10(tmp_path)
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}))
    with pytest.raises(ValueError, match=r"data_batch_3: 'data' has shape \(4, 100\).*expected \(N, 3072\) uint8"):
        load_cifar10(root)
    bad.write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3}))
    with pytest.raises(ValueError, match=r"data_batch_3: 3 labels in 'labels' for 4 images"):
        load_cifar10(root)


def test_image_folder_with_wordnet_ids(tmp_path):
    names = ["tench", "English springer", "lawn mower"]
    write_imagefolder(tmp_path, names, n_train=3, n_test=2, wnids=True)
    src = ImageFolderSource(tmp_path, image_size=16)
    assert src.class_names == tuple(names)
    assert src.resolve("Lawnmower") == 2 and src.resolve("n00000001") == 1 and src.resolve("synonym 0") == 0
    train, test = src.splits([0, 2])  # only the classes asked for are read
    assert train.x.shape == (6, 3, 16, 16) and test.x.shape == (4, 3, 16, 16)
    assert sorted(set(train.y.tolist())) == [0, 2]
    assert (train.x[:, 0, 0, 0] == train.y * STEP).all()
    with pytest.raises(KeyError, match=r"unknown class 'platypus' in imagefolder .*expected one of: tench"):
        src.resolve("platypus")


def test_image_folder_without_split_is_split_80_20(tmp_path):
    write_imagefolder(tmp_path / "x", ["a", "b"], n_train=10, n_test=0, wnids=False)
    src = ImageFolderSource(tmp_path / "x" / "train", image_size=8)
    train, test = src.splits()
    assert np.bincount(train.y).tolist() == [8, 8] and np.bincount(test.y).tolist() == [2, 2]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has train/ but neither val/ nor test/"):
        ImageFolderSource(tmp_path)
    (tmp_path / "val").mkdir()
    src = ImageFolderSource(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train/a holds no images"):
        src.splits([0])
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "a" / "0.png")
    with pytest.raises(FileNotFoundError, match=r"class 'a': expected a folder .*val/a"):
        src.splits([0])


def test_open_source_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown data source 'svhn'; choose one of digits, mnist"):
        open_source("svhn")
