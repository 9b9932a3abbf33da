"""The shared argument checks: one ValueError naming the argument, before any work."""

import math

import pytest

from fisherx import _validate
from fisherx.experiments.distances import task_distances
from fisherx.tasks import preset


def test_checks_name_the_argument_and_the_range():
    assert _validate.seeds([0, 3, 1]) == [0, 3, 1]
    with pytest.raises(ValueError, match="seeds repeats 0"):
        _validate.seeds([0, 0])
    with pytest.raises(ValueError, match="at least one seed"):
        _validate.seeds([])
    assert _validate.epsilon(None) is None and _validate.epsilon(0) == 0.0
    for bad in (2, -0.5, 1.0, math.nan, True):
        with pytest.raises(ValueError, match="epsilon must be None or in"):
            _validate.epsilon(bad)
    for bad in (0, -1, math.nan, math.inf, "1e-3"):
        with pytest.raises(ValueError, match="lr must be"):
            _validate.positive("lr", bad)
    for bad in (0, 1.5, True, None):
        with pytest.raises(ValueError, match="epochs must be"):
            _validate.count("epochs", bad)
    assert _validate.count("epochs", 3) == 3


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"seeds": (0, 0)}, "seeds repeats 0"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"epsilon": 2.0}, "epsilon must be None"),
        ({"lr": math.nan}, "lr must be a finite number"),
    ],
)
def test_task_distances_refuses_bad_settings_before_any_work(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        task_distances(preset("digits"), cache_dir=tmp_path / "c", **kw)
    assert not (tmp_path / "c").exists()  # nothing was trained or cached


def test_train_refuses_a_bad_learning_rate_and_epsilon():
    import torch

    from fisherx.models.training import train

    with pytest.raises(ValueError, match="train: lr must be > 0"):
        train(torch.nn.Linear(2, 2), None, epochs=1, lr=0.0, seed=0)
    with pytest.raises(ValueError, match="train: epsilon must be None or in"):
        train(torch.nn.Linear(2, 2), None, epochs=1, epsilon=-0.5, seed=0)
