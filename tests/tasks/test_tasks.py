"""Tasks: label mapping and balance for every preset (on synthetic files of the right shape), split determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from synthetic_datasets import source_class, write_cifar10, write_cifar100, write_imagefolder, write_mnist

from fisherx.data import open_source
from fisherx.tasks import OTHER_LABEL, PRESETS, Task, preset
from fisherx.tasks.presets import IMAGENET_T0, IMAGENET_T1, IMAGENET_T2, IMAGENET_T3

EXPECTED_LABELS = {  # preset -> number of labels of T0..T3 (docs/tasks.md)
    "digits": [2, 2, 5, 10],
    "mnist": [2, 2, 5, 10],
    "cifar10": [2, 2, 4, 10],
    "cifar100": [2, 2, 11, 21],
    "imagenet": [10, 10, 10, 10],
}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    imagenet = sorted(set(IMAGENET_T0 + IMAGENET_T1 + IMAGENET_T2 + IMAGENET_T3))
    return {
        "digits": None,
        "mnist": write_mnist(root / "mnist", [30 + 3 * c for c in range(10)], [4 + c for c in range(10)]),
        "cifar10": write_cifar10(root / "c10", per_class_train=12, per_class_test=3),
        "cifar100": write_cifar100(root / "c100", per_class_train=4, per_class_test=1),
        "imagenet": write_imagefolder(root / "inet", imagenet, n_train=5, n_test=2, size=10),
    }


def _label_of_class(data, src) -> dict[int, int]:
    return {src.resolve(c): label for label, members in enumerate(data.label_members) for c in members}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_label_mapping_and_balance(name, data_dirs):
    tasks = preset(name, image_size=12 if name == "imagenet" else None)
    assert [t.name for t in tasks] == ["T0", "T1", "T2", "T3"]
    src = open_source(tasks[0].source, data_dirs[name], tasks[0].image_size)
    for task, n_labels in zip(tasks, EXPECTED_LABELS[name], strict=True):
        data = task.load(data_dirs[name])
        assert data.num_classes == n_labels == len(data.class_names), task
        assert (task.other) == (data.class_names[-1] == OTHER_LABEL)
        assert data.in_channels == src.in_channels and data.image_size == src.image_size
        lut = _label_of_class(data, src)
        if task.other:  # "anything else" collects exactly the classes not named
            assert sorted(lut) == list(range(len(src.class_names)))
        train_val = torch.cat([data.train[1], data.val[1]])
        counts = torch.bincount(train_val, minlength=n_labels).tolist()
        if task.balanced:
            assert len(set(counts)) == 1, (task.name, counts)
        else:  # full-class tasks use the whole training set
            assert sum(counts) == src.splits()[0].y.size
        # The test split is every test image of the classes the task covers, relabelled.
        _, test = src.splits(sorted(lut))
        assert data.test[1].shape[0] == test.y.size
        if name == "digits":
            continue  # real images: the source class cannot be read back from the pixels
        for x, y in (data.train, data.val, data.test):
            cls = source_class(x, src.mean[0], src.std[0], src.scale)
            assert (torch.from_numpy(np.vectorize(lut.get)(cls)) == y).all() if y.numel() else True
        if task.other and task.balanced:  # "anything else" drawn evenly across the classes it collects
            x = torch.cat([data.train[0], data.val[0]])
            cls = source_class(x[train_val == n_labels - 1], src.mean[0], src.std[0], src.scale)
            members = [c for c, label in lut.items() if label == n_labels - 1]
            per_class = np.bincount(cls, minlength=len(src.class_names))[members]
            assert per_class.max() - per_class.min() <= 1, per_class


def test_balanced_draw_is_even_and_capped():
    t = Task("t", "digits", (("0", "1"), "2"), other=True, max_train_per_label=40, val_fraction=0.25)
    d = t.load()
    assert d.class_names == ("0+1", "2", OTHER_LABEL)
    assert d.label_counts("train") == [30, 30, 30] and d.label_counts("val") == [10, 10, 10]
    unbalanced = replace(t, balanced=False, max_train_per_label=None, val_fraction=0.0).load()
    counts = unbalanced.label_counts("train")
    assert counts[2] > counts[0] > counts[1]  # every sample of every label: "anything else" is the largest


def test_splits_are_deterministic_from_the_seed():
    t0, t1 = preset("digits")[:2]
    a, b = t0.load(), t0.load()
    for split in ("train", "val", "test"):
        for u, v in zip(getattr(a, split), getattr(b, split), strict=True):
            assert torch.equal(u, v)
    c = replace(t0, seed=1).load()
    assert not torch.equal(a.train[0], c.train[0])
    assert torch.equal(a.test[0], c.test[0]) and torch.equal(a.test[1], c.test[1])  # test never depends on the seed
    assert torch.equal(a.test[0], t1.load().test[0])  # T0 and T1 share the test images, as in the papers
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_train_val_test_do_not_overlap():
    d = preset("digits")[3].load()
    rows = {tuple(r.tolist()) for r in d.train[0].flatten(1)}
    assert not any(tuple(r.tolist()) in rows for r in d.val[0].flatten(1)[:50])


def test_task_errors_name_the_problem(data_dirs):
    with pytest.raises(KeyError, match=r"unknown class 'truck' in digits .*expected one of: 0, 1, 2"):
        Task("t", "digits", ("truck",), other=True).load()
    with pytest.raises(ValueError, match=r"class '3' appears in two labels"):
        Task("t", "digits", ("3", ("3", "4"))).load()
    with pytest.raises(ValueError, match="'anything else' would be empty"):
        Task("t", "digits", tuple(str(i) for i in range(10)), other=True).load()
    with pytest.raises(ValueError, match="other=True needs classes of interest"):
        Task("t", "digits", None, other=True)
    with pytest.raises(ValueError, match=r"1 label_names for 2 labels"):
        Task("t", "digits", ("1",), other=True, label_names=("one",)).load()
    with pytest.raises(ValueError, match="unknown preset 'svhn'"):
        preset("svhn")
    with pytest.raises(ValueError, match="needs data_dir"):
        preset("cifar10")[0].load()


def test_image_size_resizes(data_dirs):
    d = replace(preset("digits")[0], image_size=16).load()
    assert d.train[0].shape[1:] == (1, 16, 16) and d.image_size == 16
