"""TA-NAS on the user's own tasks: baselines from .npz files recorded so the dictionary can rebuild them, a target
from in-memory tensors, and the clear refusal to record an in-memory task."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_nas_space import _one_thread  # noqa: F401  (autouse: one thread)

from fisherx.models import EpsilonWarning
from fisherx.nas import SearchSpace
from fisherx.nas.ta_nas import TaskDictionary, add_baseline, ta_nas
from fisherx.tasks import Task

SEARCH = dict(candidates=1, rounds=1, alternations=1, batch_size=64, final_epochs=1, device="cpu", progress=False)
SPACE = SearchSpace.general(width=4, depth=1)


def _images(seed, n=120):
    """Own 1×8×8 images: 4 classes of noisy bars (a horizontal or vertical bar at one of two places)."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = g.normal(0, 0.3, size=(n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        if c < 2:
            x[i, 0, 2 + 3 * c, :] += 2.0
        else:
            x[i, 0, :, 2 + 3 * (c - 2)] += 2.0
    return x, y.astype(np.int64)


def _npz(path, seed):
    (x, y), (xt, yt) = _images(seed), _images(seed + 100, 40)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt, class_names=np.array(["h0", "h1", "v0", "v1"]))
    return path


def test_ta_nas_on_user_tasks(tmp_path):
    d = TaskDictionary.create(tmp_path / "dict", arch="cnn", head_width=4, in_channels=1, image_size=8, eps_epochs=2)
    memory = Task.from_tensors("M", train=_images(0), test=_images(1, 40), classes=("0",), other=True)
    with pytest.raises(ValueError, match=r"task 'M' was built from in-memory data.*Task\.from_npz\('M', path"):
        add_baseline(d, memory, space=SPACE, **SEARCH)
    assert len(TaskDictionary(tmp_path / "dict")) == 0  # refused before anything was trained or written
    a = Task.from_npz("A", _npz(tmp_path / "a.npz", 0), classes=("h0",), other=True)
    b = Task.from_npz("B", _npz(tmp_path / "b.npz", 1), classes=(("v0", "v1"),), other=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpsilonWarning)
        for t in (a, b):
            add_baseline(d, t, space=SPACE, **SEARCH)
        # The target is in memory: searched fine; growing the dictionary with it would be refused.
        target = Task.from_tensors(
            "C",
            train=_images(2),
            test=_images(3, 40),
            class_names=("h0", "h1", "v0", "v1"),
            classes=("h1",),
            other=True,
        )
        r = ta_nas(target, tmp_path / "dict", compare=(), **SEARCH)
        with pytest.raises(ValueError, match="in-memory data"):
            ta_nas(target, tmp_path / "dict", compare=(), grow=True, **SEARCH)
    assert set(r.distances) == {"A", "B"} and r.closest in ("A", "B")
    assert all(0.0 <= v <= 1.0 for v in r.distances.values())
    # The dictionary records how to rebuild each baseline: its file and its class subset.
    again = TaskDictionary(tmp_path / "dict")
    rec = again["B"].task
    assert rec["data_file"] == str((tmp_path / "b.npz").resolve()) and rec["classes"] == [["v0", "v1"]]
    rebuilt = Task.from_config(rec)
    assert rebuilt.load().fingerprint() == b.load().fingerprint()
