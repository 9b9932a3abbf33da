"""Tasks on the user's own data: from tensors, numpy arrays, Datasets and .npz files; the papers' class-subset recipe
on user labels; content fingerprints; one clear error per bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import fisherx
from fisherx.tasks import OTHER_LABEL, Task, UserTask


def _data(n=60, d=5, classes=4, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d)).astype(np.float32)
    y = np.arange(n) % classes
    return x, y.astype(np.int64)


def test_from_tensors_and_arrays_agree():
    x, y = _data()
    xt, yt = _data(20, seed=1)
    a = Task.from_tensors("A", train=(x, y), test=(xt, yt))
    b = Task.from_tensors(
        "A", train=(torch.from_numpy(x), torch.from_numpy(y)), test=(torch.from_numpy(xt), torch.from_numpy(yt))
    )
    assert isinstance(a, UserTask) and isinstance(a, Task)
    da, db = a.load(), b.load()
    assert da.fingerprint() == db.fingerprint()
    assert a.data_sha256 == b.data_sha256 and a.config() == b.config()
    assert da.num_classes == 4 and da.class_names == ("0", "1", "2", "3") and da.input_shape == (5,)
    # Inputs are taken as they are; val is carved from train (10 % per label), seeded; test is untouched.
    assert da.train[0].shape[0] + da.val[0].shape[0] == 60 and da.val[0].shape[0] == 8
    assert torch.equal(da.test[0], torch.from_numpy(xt))
    rows = {tuple(r) for r in np.concatenate([da.train[0].numpy(), da.val[0].numpy()])}
    assert rows == {tuple(r) for r in x}
    assert not set(map(tuple, da.val[0].numpy())) & set(map(tuple, da.train[0].numpy()))


def test_val_given_is_kept_and_seed_moves_the_carved_val():
    x, y = _data()
    xv, yv = _data(12, seed=2)
    d = Task.from_tensors("A", train=(x, y), test=(x[:8], y[:8]), val=(xv, yv)).load()
    assert d.train[0].shape[0] == 60 and torch.equal(d.val[0], torch.from_numpy(xv))
    v0 = Task.from_tensors("A", train=(x, y), test=(x, y), seed=0).load().val[0]
    v1 = Task.from_tensors("A", train=(x, y), test=(x, y), seed=1).load().val[0]
    assert not torch.equal(v0, v1)


def test_class_subset_recipe_on_user_labels():
    x, y = _data(200, classes=5)
    names = ("a", "b", "c", "d", "e")
    t = Task.from_tensors(
        "ab",
        train=(x, y),
        test=(x[:50], y[:50]),
        class_names=names,
        classes=("a", ("b", "c")),
        other=True,
        val_fraction=0.0,
    )
    d = t.load()
    assert d.class_names == ("a", "b+c", OTHER_LABEL) and d.num_classes == 3
    assert d.label_members == (("a",), ("b", "c"), ("d", "e"))
    assert d.label_counts() == [40, 40, 40]  # balanced: the smallest label's count, 40 (class a)
    # "anything else" is drawn evenly across d and e: 20 each.
    lut = {tuple(r): c for r, c in zip(x, y, strict=True)}
    other = [lut[tuple(r)] for r in d.train[0][d.train[1] == 2].numpy()]
    assert sorted(np.bincount(other, minlength=5).tolist()) == [0, 0, 0, 20, 20]
    assert t.balanced  # the papers' default for class-subset tasks


def test_from_datasets_and_npz(tmp_path):
    x, y = _data()
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    a = Task.from_datasets("A", train=ds, test=ds)
    b = Task.from_tensors("A", train=(x, y), test=(x, y))
    assert a.load().fingerprint() == b.load().fingerprint()
    path = tmp_path / "a.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y, class_names=np.array(list("wxyz")))
    c = Task.from_npz("A", path, classes=("w",), other=True)
    cfg = c.config()
    assert cfg["data_file"] == str(path.resolve()) and cfg["class_names"] == list("wxyz")
    again = Task.from_config(cfg)
    assert again.load().fingerprint() == c.load().fingerprint()
    assert c.rebuild_spec() == cfg
    with pytest.raises(ValueError, match="in-memory data.*from_npz"):
        b.rebuild_spec()


def test_fingerprint_follows_the_data():
    x, y = _data()
    a = Task.from_tensors("A", train=(x, y), test=(x, y))
    x2 = x.copy()
    x2[3, 1] += 1.0
    b = Task.from_tensors("A", train=(x2, y), test=(x, y))
    assert a.data_sha256 != b.data_sha256 and a.config() != b.config()
    assert a.load().fingerprint() != b.load().fingerprint()


def test_regression_targets():
    x, _ = _data()
    d = Task.from_tensors("ae", train=(x, x), test=(x[:10], x[:10])).load()
    assert d.task.target == "regression" and d.num_classes == 5
    assert d.train[1].dtype == torch.float32 and d.val[0].shape[0] == 6


class _Dicts(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"x": torch.zeros(2)}


def test_bad_inputs_one_line_errors(tmp_path):
    x, y = _data()
    cases = [
        (dict(train=(x, y)), ValueError, r"task 'A': the test split is missing; pass test=\(inputs, targets\)"),
        (dict(test=(x, y)), ValueError, r"the train split is missing"),
        (
            dict(train=(x, y), test=(x, y + 1), class_names="abcd"),
            ValueError,
            r"test label out of range: labels span 1\.\.4 but must lie in \[0, 4\)",
        ),
        (
            dict(train=(x, y), test=(x, y), class_names=("a", "b")),
            ValueError,
            r"train label out of range: labels span 0\.\.3 but must lie in \[0, 2\) \(the 2 class_names\)",
        ),
        (dict(train=(x, -y), test=(x, y)), ValueError, r"train label out of range"),
        (
            dict(train=(x, y[:10]), test=(x, y)),
            ValueError,
            r"the train split has inputs of shape \(60, 5\) and "
            r"targets of shape \(10,\)",
        ),
        (
            dict(train=(x, y), test=(x[:, :3], y)),
            ValueError,
            r"the splits' inputs differ in shape: train \(5,\), "
            r"test \(3,\)",
        ),
        (dict(train=(x, y), test=(x, y.astype(np.float32))), TypeError, r"labels in some splits and floats"),
        (dict(train=x, test=(x, y)), TypeError, r"train must be an \(inputs, targets\) pair"),
        (dict(train=(x, y), test=(x, y), classes=("9",)), KeyError, r"unknown class '9'"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg) as info:
            Task.from_tensors("A", **kw).load()
        assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match=r"the train dataset: item 0 is a dict, not an \(input, target\) pair"):
        Task.from_datasets("A", train=_Dicts(), test=_Dicts())
    np.savez(tmp_path / "b.npz", x_train=x, y_train=y)
    with pytest.raises(ValueError, match=r"b\.npz lacks x_test, y_test \(the test split"):
        Task.from_npz("B", tmp_path / "b.npz")
    with pytest.raises(FileNotFoundError, match="data file .*nope.npz not found"):
        Task.from_npz("B", tmp_path / "nope.npz")

    assert fisherx.Task is Task
