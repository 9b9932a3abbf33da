"""task_distances with intervals (bootstrap=R over the test samples, Student t over seeds), the probability of
being the closest task, and the sanity gates on by default (ε-accuracy, collapsed Fisher, self-distance)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fisherx
from fisherx.experiments import trust
from fisherx.experiments.distances import TaskDistanceResult
from fisherx.models import EpsilonWarning
from fisherx.tasks import preset

ARGS = dict(archs=["mlp"], seeds=[0, 1], epochs=6, epsilon=0.25, fisher_samples=150, progress=False)
R = 20


@pytest.fixture(scope="module")
def tasks():
    return preset("digits")[:3]


@pytest.fixture(scope="module")
def run(tasks, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return fisherx.task_distances(tasks, cache_dir=cache, bootstrap=R, **ARGS), cache


def test_replicates_intervals_and_closest_probabilities(run):
    result, _ = run
    d, reps = result.distances["mlp"], result.replicates["mlp"]
    assert reps.shape == (2, R, 3, 3)
    assert np.all(np.diagonal(reps, axis1=2, axis2=3) == 0.0)
    off = ~np.eye(3, dtype=bool)
    assert np.all(reps[:, :, off] > 0) and reps[:, :, off].std(axis=1).min() > 0, "replicates must vary"
    boot = result.interval_bootstrap("mlp")
    assert boot.shape == (2, 3, 3, 2) and np.all(boot[..., 0] <= boot[..., 1])
    np.testing.assert_allclose(boot, trust.bootstrap_interval(d, reps, 0.95, axis=1))
    seeds = result.interval_seeds("mlp")
    np.testing.assert_allclose(seeds, np.clip(trust.seed_interval(d, 0.95), 0.0, 1.0))  # clipped to [0, 1]
    assert np.all((seeds[..., 0] <= d.mean(0)) & (d.mean(0) <= seeds[..., 1]))
    p = result.closest_probability("mlp")
    np.testing.assert_allclose(p.sum(0), 1.0)
    assert np.all(np.diag(p) == 0)
    assert result.draws("mlp").shape == (2 * R, 3, 3)
    verdicts = result.verdicts("mlp")
    assert set(verdicts) == {"T0", "T1", "T2"}
    assert all(
        ("is the closest to" in v and f"of {2 * R} draws" in v) or v.startswith("no clear winner")
        for v in verdicts.values()
    )
    c = result.concentration["mlp"]
    assert c.shape == (2, 3, 3) and np.all((c > 0) & (c < trust.CONCENTRATION_LIMIT))
    assert result.config["bootstrap"] == {"replicates": R, "seed": 0} and result.config["gates"] == "warn"


def test_outputs_carry_the_intervals(run, tmp_path):
    result, _ = run
    table = result.table()
    assert "interval of the mean over seeds (Student t)" in table and "bootstrap interval" in table
    assert "closest source over 40 draws (seeds × replicates):" in table
    data = json.loads(result.to_json(tmp_path / "r.json"))
    assert np.asarray(data["interval_bootstrap"]["mlp"]).shape == (2, 3, 3, 2)
    assert data["verdicts"]["mlp"] == result.verdicts("mlp")
    back = TaskDistanceResult.from_json(tmp_path / "r.json")
    np.testing.assert_array_equal(back.replicates["mlp"], result.replicates["mlp"])
    np.testing.assert_array_equal(back.closest_probability("mlp"), result.closest_probability("mlp"))
    png = tmp_path / "intervals.png"
    result.plot_intervals(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_without_bootstrap_the_seeds_still_give_intervals(run, tasks):
    _, cache = run  # same networks; the Fishers without replicates are other cache entries
    plain = fisherx.task_distances(tasks, cache_dir=cache, **ARGS)
    assert plain.replicates == {} and plain.interval_bootstrap("mlp") is None
    assert plain.draws("mlp").shape == (2, 3, 3) and plain.interval_seeds("mlp").shape == (3, 3, 2)
    # The same Fishers up to float32 summation order (with bootstrap they come out of the weighted reduction).
    np.testing.assert_allclose(plain.distances["mlp"], run[0].distances["mlp"], rtol=1e-6, atol=0)


def test_untrained_networks_are_refused_or_warned_about(tasks, tmp_path):
    # One epoch at a tiny learning rate leaves every network near chance: below 1 − ε for ε = 0.1.
    args = dict(ARGS, seeds=[0], epochs=1, lr=1e-7, epsilon=0.1)
    with pytest.raises(trust.GateError, match=r"mlp seed 0 T0: test accuracy 0\.\d+ < 1 − ε = 0\.900"):
        fisherx.task_distances(tasks, cache_dir=tmp_path, gates="refuse", **args)
    with pytest.warns(EpsilonWarning, match="3 of 3 networks are not ε-approximations"):
        fisherx.task_distances(tasks, cache_dir=tmp_path, **args)
    with pytest.raises(ValueError, match="gates must be one of warn, refuse, off"):
        fisherx.task_distances(tasks, gates="strict", **args)


def test_self_distance_and_concentration_gates_are_wired(run, tasks, monkeypatch):
    _, cache = run
    real = trust.replicate_column

    def broken(sources, target, *a, **k):  # a kernel that no longer gives d(F, F) = 0 on some replicate
        out = real(sources, target, *a, **k)
        out[3] += 0.5
        return out

    monkeypatch.setattr(trust, "replicate_column", broken)
    with pytest.raises(trust.GateError, match=r"d\[T0,T0\] \(mlp, seed 0\): ftd\(F, F\) ranges over"):
        fisherx.task_distances(tasks, cache_dir=cache, bootstrap=R, gates="refuse", **ARGS)
    monkeypatch.setattr(trust, "replicate_column", real)
    monkeypatch.setattr(trust, "CONCENTRATION_LIMIT", 0.0)  # every Fisher "collapsed": the gate must fire
    with pytest.warns(trust.TrustWarning, match=r"F\[T0→T0\] \(mlp, seed 0\): .* collapsed Fisher"):
        fisherx.task_distances(tasks, cache_dir=cache, **ARGS)


def test_cli_bootstrap_and_gates(run, tmp_path, capsys):
    from fisherx.cli import main

    _, cache = run
    rc = main(
        [
            "distances",
            "--preset",
            "digits",
            "--tasks",
            "T0,T1,T2",
            "--archs",
            "mlp",
            "--seeds",
            "0,1",
            "--epochs",
            "6",
            "--epsilon",
            "0.25",
            "--fisher-samples",
            "150",
            "--bootstrap",
            str(R),
            "--gates",
            "refuse",
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(cache),
            "--quiet",
        ]
    )
    assert rc == 0
    assert f"closest source over {2 * R} draws (seeds × replicates)" in capsys.readouterr().out
    assert (tmp_path / "intervals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = TaskDistanceResult.from_json(tmp_path / "result.json")
    assert back.replicates["mlp"].shape == (2, R, 3, 3)
    assert back.stats == {"network.hit": 6, "fisher.hit": 18}, "everything from the fixture's cache"
