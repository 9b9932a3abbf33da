"""task_distances on the user's own tasks and networks: a factory, ready trained networks, a user train function,
MSE on autoencoding tasks, the cache keyed by the data, and one clear error per bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fisherx
from fisherx import Task, fisher_diag, ftd, task_distances
from fisherx.models import EpsilonWarning, seeded, train

FAST = dict(epochs=2, batch_size=32, progress=False, device="cpu", gates="off")


def _family(d=6, n=90, shift=0.0):
    g = np.random.default_rng(0)
    x = g.normal(size=(n, d)).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int64)
    x[np.arange(n), y] += 2.0 + shift  # learnable: feature y is large for class y
    tr, te = (x[:60], y[:60]), (x[60:], y[60:])
    return [
        Task.from_tensors("A", train=tr, test=te, classes=("0",), other=True),
        Task.from_tensors("B", train=tr, test=te, classes=("1",), other=True),
        Task.from_tensors("C", train=tr, test=te),
    ]


def mlp(num_outputs):
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, num_outputs))


def test_factory_runs_and_is_cached_by_data(tmp_path):
    tasks = _family()
    r = task_distances(tasks, model=mlp, seeds=(0, 1), cache_dir=tmp_path, **FAST)
    assert r.archs == ["mlp"] and r.distances["mlp"].shape == (2, 3, 3) and r.head_width == 3
    assert np.all(np.diag(r.mean()) == 0) and np.all((r.mean() >= 0) & (r.mean() <= 1))
    assert r.config["networks"] == "factory"
    again = task_distances(tasks, model=mlp, seeds=(0, 1), cache_dir=tmp_path, **FAST)
    assert again.stats.get("network.miss", 0) == 0 and again.stats.get("fisher.miss", 0) == 0
    np.testing.assert_array_equal(again.distances["mlp"], r.distances["mlp"])
    changed = task_distances(_family(shift=0.5), model=mlp, seeds=(0, 1), cache_dir=tmp_path, **FAST)
    assert changed.stats["network.miss"] == 6  # new data: every network is trained again


def test_given_networks_are_used_as_they_are():
    tasks = _family()
    datas = [t.load() for t in tasks]
    nets = {}
    for t, d in zip(tasks, datas, strict=True):
        with seeded(0):
            nets[t.name] = mlp(3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EpsilonWarning)
            train(nets[t.name], d, epochs=2, seed=0, progress=False, epsilon=None)
    before = {k: v.clone() for k, v in nets["A"].state_dict().items()}
    r = task_distances(tasks, networks=nets, **FAST)
    assert r.archs == ["given"] and r.seeds == [0] and r.config["networks"] == "given"
    assert all(torch.equal(v, nets["A"].state_dict()[k]) for k, v in before.items())  # not trained further
    f_ab = fisher_diag(nets["A"], datas[2].test, progress=False)
    f_bb = fisher_diag(nets["C"], datas[2].test, progress=False)
    assert r.distances["given"][0, 0, 2] == pytest.approx(float(ftd(f_ab, f_bb)), rel=1e-6, abs=1e-9)


def test_user_train_function_and_mse_on_autoencoding_tasks():
    g = np.random.default_rng(1)
    x = g.normal(size=(40, 5)).astype(np.float32)
    tasks = [
        Task.from_tensors(n, train=(x * s, x * s), test=(x[:10] * s, x[:10] * s))
        for n, s in (("ae1", 1.0), ("ae2", 2.0))
    ]
    calls = []

    def fit(model, data, seed):
        calls.append((data.task.name, seed))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(5):
            opt.zero_grad()
            nn.functional.mse_loss(model(data.train[0]), data.train[1]).backward()
            opt.step()

    def ae(num_outputs):
        return nn.Sequential(nn.Linear(5, 3), nn.Linear(3, num_outputs))

    r = task_distances(tasks, model=ae, seeds=(0,), loss="mse", train_fn=fit, **FAST)
    assert sorted(calls) == [("ae1", 0), ("ae2", 0)]
    assert r.distances["ae"].shape == (1, 2, 2) and np.isnan(r.accuracies["ae"]).all()
    assert r.distances["ae"][0, 0, 1] > 0
    back = fisherx.TaskDistanceResult.from_json(r.to_json())  # accuracies without meaning round-trip as null
    assert np.isnan(back.accuracies["ae"]).all()


def test_bad_inputs_one_line_errors():
    tasks = _family()

    def narrow(num_outputs):
        return nn.Sequential(nn.Linear(6, 2))

    wide = _family(d=7)
    cases = [
        (
            dict(model=narrow),
            ValueError,
            r"network 'narrow' returns outputs of shape \(2,\) per sample but the family "
            r"needs \(3,\): its head has the wrong width for num_outputs=3",
        ),
        (dict(model=lambda k: "not a module"), TypeError, r"model factory '<lambda>' returned str, not an nn\.Module"),
        (dict(model="resnet9"), ValueError, r"unknown architecture 'resnet9'"),
        (dict(networks={"A": mlp(3)}), ValueError, r"networks must hold one trained network per task: missing B, C"),
        (dict(networks={"A": mlp(3), "B": mlp(3), "C": 3}), TypeError, r"networks\['C'\] is a int, not an nn"),
        (dict(model=mlp, loss="hinge"), ValueError, r"loss must be 'cross_entropy', 'mse' or a callable"),
        (dict(model=mlp, head="refit"), ValueError, r"head='refit' refits the built-in networks' classifier"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg) as info:
            task_distances(tasks, seeds=(0,), **kw, **FAST)
        assert "\n" not in str(info.value)
    with pytest.raises(
        ValueError,
        match=r"inputs of one shape and dtype; got A: \(6,\) float32, B: \(6,\) float32, "
        r"C: \(7,\) float32",
    ):
        task_distances(tasks[:2] + wide[2:], model=mlp, seeds=(0,), **FAST)
