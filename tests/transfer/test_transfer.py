"""Transfer learning: MSE training and Fishers, Taskonomy's AHP, rank agreement, the brute-force affinity run
(resumable, agreeing with the FTD where the truth is known), and choosing the source to fine-tune by FTD."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fisher_models import naive_fisher

import fisherx
from fisherx.models import build, per_sample_losses, seeded, train
from fisherx.tasks import PixelTask
from fisherx.transfer import affinity as affinity_mod
from fisherx.transfer import (
    agreement,
    agreement_table,
    ahp_affinity,
    choose_source,
    compare_sources,
    comparison_table,
    cost_table,
    fine_tune,
    kendall,
    spearman,
    transfer_affinity,
)


@pytest.mark.parametrize("size", [8, 9])
def test_mse_fisher_of_the_autoencoder_matches_a_naive_per_sample_loop(size):
    with seeded(0):
        m = build("autoencoder", 2, 3, size).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 2, size, size, generator=g, dtype=torch.float64)
    y = torch.randn(7, 3, size, size, generator=g, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the transposed conv's fallback-rule notice
        f = fisherx.fisher_diag(m, (x, y), loss="mse", progress=False)
    ref = naive_fisher(m, x, y, loss="mse")
    assert set(f.keys()) == set(ref)
    for name, r in ref.items():
        assert (f[name] - r).norm() <= 1e-10 * r.norm(), name


def _pixel_data(n=40, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    y = torch.flip(x, dims=(3,))
    split = (
        (x[: n // 2], y[: n // 2]),
        (x[n // 2 : 3 * n // 4], y[n // 2 : 3 * n // 4]),
        (x[3 * n // 4 :], y[3 * n // 4 :]),
    )
    return SimpleNamespace(
        task=SimpleNamespace(name="flip"),
        train=split[0],
        val=split[1],
        test=split[2],
        in_channels=1,
        out_channels=1,
        image_size=size,
        fingerprint=lambda: "flip",
    )


def test_train_with_mse_scores_by_test_loss_and_is_deterministic():
    data = _pixel_data()
    runs = []
    for _ in range(2):
        with seeded(0):
            m = build("autoencoder", 1, 1, 6)
        before = per_sample_losses(m, *data.test).mean()
        runs.append(train(m, data, epochs=4, batch_size=8, seed=0, progress=False, loss="mse"))
    r = runs[0]
    assert r.test_accuracy is None and r.val_accuracy is None and not r.classification and r.loss == "mse"
    assert r.test_loss == pytest.approx(float(per_sample_losses(r.model, *data.test).mean()))
    assert r.test_loss < float(before)
    assert r.val_loss == min(h["val_loss"] for h in r.history)  # the kept epoch is the lowest validation loss
    assert r.test_loss == runs[1].test_loss and r.summary()["test_loss"] == r.test_loss and r.meets_epsilon

    def half_sq(out, y):  # the same loss written by hand: training must take the same steps
        return 0.5 * (out - y).square().flatten(1).sum(1)

    with seeded(0):
        m = build("autoencoder", 1, 1, 6)
    custom = train(m, data, epochs=4, batch_size=8, seed=0, progress=False, loss=half_sq)
    assert custom.loss == "half_sq" and custom.test_loss == pytest.approx(r.test_loss, rel=1e-5)
    with pytest.raises(ValueError, match="loss must be 'cross_entropy', 'mse' or a callable"):
        train(m, data, epochs=1, seed=0, progress=False, loss="l1")
    with pytest.raises(ValueError, match="one loss per sample"):
        train(m, data, epochs=1, seed=0, progress=False, loss=lambda o, y: (o - y).square().mean())


def test_ahp_of_known_tournaments():
    # Source 0 beats 1 on every sample, 1 beats 2 on every sample: the order is 0 > 1 > 2.
    losses = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0]])
    w = ahp_affinity(losses)
    assert w.sum() == pytest.approx(1.0) and w[0] > w[1] > w[2] > 0
    assert np.allclose(ahp_affinity(torch.ones(4, 5)), 0.25)  # all ties: no preference
    # Two sources that split the samples evenly are equal whatever the loss scale.
    w = ahp_affinity(np.array([[0.0, 100.0], [1.0, 1.0]]))
    assert np.allclose(w, 0.5)
    with pytest.raises(ValueError, match="losses must be"):
        ahp_affinity(np.zeros((3, 0)))


def test_rank_correlations_on_hand_cases_and_against_scipy():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(kendall([2, 2], [1, 2]))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (3, 5, 11):
        x, y = rng.integers(0, 4, n).astype(float), rng.normal(size=n)  # ties in x
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
        assert kendall(x, y) == pytest.approx(stats.kendalltau(x, y)[0], abs=1e-12)


def _family():
    # The truth is known: "copy" is exactly the target "autoencode" (same images, same transform, same seed).
    opts = dict(max_train_per_label=8, val_fraction=0.2)
    return [
        PixelTask("autoencode", "autoencode", **opts),
        PixelTask("copy", "autoencode", **opts),
        PixelTask("rotate", "rotate", **opts),
        PixelTask("edges", "edges", **opts),
    ]


RUN = dict(seeds=(0, 1), source_epochs=6, budget=1, batch_size=16)


@pytest.fixture(scope="module")
def family_run(tmp_path_factory):
    torch.set_num_threads(1)
    return transfer_affinity(_family(), cache_dir=tmp_path_factory.mktemp("aff"), **RUN)


def test_affinity_and_ftd_agree_where_one_source_is_exactly_the_target(family_run):
    r = family_run
    k = len(r.task_names)
    assert r.ftd.shape == r.gain.shape == r.ahp.shape == (2, k, k) and r.scratch_loss.shape == (2, k)
    assert np.allclose(r.ftd[:, 1, 0], 0.0, atol=1e-6) and np.allclose(r.ftd[:, 0, 1], 0.0, atol=1e-6)
    assert np.allclose(np.diagonal(r.ftd, axis1=1, axis2=2), 0.0, atol=1e-6)
    assert np.allclose(r.ahp.sum(axis=1), 1.0)  # AHP: per target, the sources' affinities sum to 1
    assert not np.allclose(r.ahp, np.transpose(r.ahp, (0, 2, 1)))  # asymmetric
    assert np.array_equal(r.fine_tuned_loss[:, 1, 0], r.fine_tuned_loss[:, 0, 0])  # N_copy is N_autoencode
    assert (r.gain[:, 1, 0] > 0).all()  # starting from the target's twin beats starting from scratch
    for kind in ("ahp", "gain"):
        a = agreement(r, kind)
        assert a["autoencode"]["ftd_closest"] == ["copy", "copy"] == a["autoencode"]["affinity_best"]
        assert a["copy"]["top1_agreement"] == 1.0
        assert a["autoencode"]["spearman"]["interval"] is not None
        assert "autoencode" in agreement_table(a)
    comp = compare_sources(r)
    assert comp["autoencode"]["ftd_chosen"]["per_seed"] == comp["autoencode"]["affinity_best"]["per_seed"]
    assert comp["autoencode"]["ftd_chosen"]["mean"] < comp["autoencode"]["scratch"]["mean"]
    assert "from FTD-chosen" in comparison_table(comp)
    c = r.cost()
    assert c["ftd_seconds"] > 0 and c["ratio"] == pytest.approx(c["brute_force_seconds"] / c["ftd_seconds"])
    assert "brute force / FTD" in cost_table(r)
    d = r.to_dict()
    assert d["tasks"] == r.task_names and np.allclose(d["ahp"], r.ahp)


def test_an_interrupted_affinity_run_resumes_with_identical_results(family_run, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = affinity_mod.train

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # past the sources and a few fine-tunes of seed 0
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(affinity_mod, "train", dying)
    with pytest.raises(KeyboardInterrupt):
        transfer_affinity(_family(), cache_dir=tmp_path, **RUN)
    stored = len(list(tmp_path.rglob("*.fxc")))
    assert stored >= 6
    monkeypatch.setattr(affinity_mod, "train", real)
    resumed = transfer_affinity(_family(), cache_dir=tmp_path, **RUN)
    for name in ("ftd", "fine_tuned_loss", "scratch_loss", "source_loss", "gain", "ahp"):
        assert np.array_equal(getattr(resumed, name), getattr(family_run, name)), name
    again = transfer_affinity(_family(), cache_dir=tmp_path, **RUN)  # everything from the cache now
    assert np.array_equal(again.ahp, family_run.ahp) and again.seconds == resumed.seconds


def test_choose_source_picks_the_twin_and_fine_tune_leaves_the_source_alone():
    torch.set_num_threads(1)
    fam = _family()
    datas = [t.load() for t in fam]

    def net(d, epochs=4):
        with seeded(0):
            m = build("autoencoder", 1, 1, 8)
        return train(m, d, epochs=epochs, batch_size=16, seed=0, progress=False, loss="mse").model

    nets = {t.name: net(d) for t, d in zip(fam, datas, strict=True)}
    target_model = nets.pop("autoencode")
    choice = choose_source(datas[0], nets, target_model=target_model)
    assert choice.name == "copy" and choice.distances["copy"] == pytest.approx(0.0, abs=1e-6)
    assert min(choice.distances["rotate"], choice.distances["edges"]) > 0.01
    trained = choose_source(fam[0], nets, epochs=2)  # the target's ε-network trained here
    assert set(trained.distances) == {"copy", "rotate", "edges"}
    before = {k: v.clone() for k, v in nets["rotate"].state_dict().items()}
    r = fine_tune(nets["rotate"], datas[0], epochs=1, seed=0)
    assert all(torch.equal(before[k], v) for k, v in nets["rotate"].state_dict().items())
    assert r.test_loss is not None and r.model is not nets["rotate"]
    with pytest.raises(ValueError, match="no candidate networks"):
        choose_source(datas[0], {})


def test_affinity_argument_errors():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        transfer_affinity(_family()[:1])
    with pytest.raises(ValueError, match="names must be unique"):
        transfer_affinity([_family()[0], _family()[0]])
    with pytest.raises(ValueError, match="budget must be a positive int"):
        transfer_affinity(_family(), budget=0)
    with pytest.raises(ValueError, match="same input/target channels and image size"):
        transfer_affinity([PixelTask("a", max_train_per_label=2), PixelTask("b", max_train_per_label=2, image_size=12)])
