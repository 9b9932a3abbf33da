"""Figures of a task-distance result: fixed, labelled colour scales; intervals inside the metric's range; an atlas
that measures its own fidelity and falls back to a clustered heatmap; Figures returned, drawing into a given ax,
no backend forced. Also the result's file schema (versioned JSON, long-form CSV)."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from fisherx.experiments import plots
from fisherx.experiments.result import SCHEMA_VERSION, TaskDistanceResult

PNG = b"\x89PNG\r\n\x1a\n"


def _result(mean: np.ndarray, seeds=(0, 1), spread=0.0, metric="ftd", seed=0) -> TaskDistanceResult:
    k = mean.shape[0]
    g = np.random.default_rng(seed)
    d = np.stack([mean + spread * g.standard_normal(mean.shape) for _ in seeds])
    d = np.clip(d, 0.0, 1.0)
    for m in d:
        np.fill_diagonal(m, 1.0 if metric == "cosine" else 0.0)
    names = [f"T{i}" for i in range(k)]
    return TaskDistanceResult(
        names, ["mlp"], list(seeds), metric, {"mlp": d}, {"mlp": np.full((len(seeds), k), 0.9)}, "shared", k
    )


def _line(k=4) -> np.ndarray:
    x = np.linspace(0.0, 0.9, k)
    return np.abs(x[:, None] - x[None, :])


def _simplex(k=4, d=0.5) -> np.ndarray:
    return d * (1.0 - np.eye(k))  # k equidistant tasks need k − 1 dimensions


def test_heatmaps_share_a_fixed_labelled_scale(tmp_path):
    res = _result(_line(), spread=0.05)
    fig = res.plot_heatmaps(tmp_path / "h.png")
    assert isinstance(fig, Figure) and (tmp_path / "h.png").read_bytes()[:8] == PNG
    means = [im for ax in fig.axes for im in ax.images if ax.get_title().endswith("mean")]
    assert means and all(im.norm.vmin == 0.0 and im.norm.vmax == 1.0 for im in means)  # FTD's range, not the data's
    labels = [ax.get_ylabel() for ax in fig.axes if not ax.get_title()]  # the colour bars' axes
    assert "FTD, mean of 2 seeds" in labels and "FTD, std over seeds" in labels


def test_single_seed_std_panel_says_there_is_no_spread():
    res = _result(_line(), seeds=(0,))
    fig = Figure()
    ax = fig.subplots()
    assert res.plot_heatmaps(ax=ax, stat="std") is fig
    assert not ax.images and "no spread" in " ".join(t.get_text() for t in ax.texts)


def test_every_plot_draws_into_a_given_ax():
    res = _result(_line(), spread=0.05)
    fig = Figure()
    axes = fig.subplots(1, 3)
    assert res.plot_heatmaps(ax=axes[0]) is fig and axes[0].images
    assert res.plot_atlas(ax=axes[1]) is fig and axes[1].collections  # the tasks' scatter
    assert res.plot_intervals(ax=axes[2], target="T1") is fig and axes[2].patches
    assert axes[2].get_title() == "mlp: → T1"
    assert len(fig.axes) >= 3


def test_no_backend_is_forced(monkeypatch, tmp_path):
    before = matplotlib.get_backend()

    def refuse(*a, **k):
        raise AssertionError("a plot chose the matplotlib backend")

    monkeypatch.setattr(matplotlib, "use", refuse)
    res = _result(_line(), spread=0.05)
    res.plot_heatmaps(tmp_path / "h.png")
    res.plot_atlas(tmp_path / "a.png")
    res.plot_intervals(tmp_path / "i.png")
    assert matplotlib.get_backend() == before


def test_intervals_stay_inside_the_metric_range():
    res = _result(np.full((3, 3), 0.02), seeds=(0, 1), spread=0.3, seed=3)  # two seeds: a wide t interval
    iv = res.interval_seeds()
    assert iv.min() >= 0.0 and iv.max() <= 1.0
    raw_low = res.mean() - 12.7 * res.std() / np.sqrt(2)  # t(0.975, df 1) ≈ 12.7: reaches below 0 unclipped
    assert (raw_low < 0).any()
    fig = res.plot_intervals()
    assert all(ax.get_ylim()[0] == 0.0 for ax in fig.axes)


def test_fidelity_of_a_faithful_and_an_unfaithful_embedding():
    line = _result(_line())
    fit = line.embedding_fidelity()
    assert fit["stress"] < 1e-6 and fit["explained"] == pytest.approx(1.0) and fit["faithful"]
    simplex = _result(_simplex())
    fit = simplex.embedding_fidelity()
    assert fit["explained"] == pytest.approx(2 / 3) and not fit["faithful"]
    a, b, real, drawn = fit["worst_pair"]
    assert real == pytest.approx(0.5) and drawn < 0.5 * real


def test_unfaithful_atlas_falls_back_to_a_clustered_heatmap():
    fig = _result(_simplex(), spread=0.01).plot_atlas()
    (panel,) = [ax for ax in fig.axes if ax.get_title().startswith("mlp")]
    assert panel.images and "unfaithful" in panel.get_title() and "clustered" in panel.get_title()
    faithful = _result(_line()).plot_atlas()
    (panel,) = [ax for ax in faithful.axes if ax.get_title().startswith("mlp")]
    assert not panel.images and "stress 0.00" in panel.get_title()
    forced = _result(_simplex()).plot_atlas(fallback=False)
    assert any(ax.collections for ax in forced.axes)  # the MDS scatter, unfaithful or not


def test_average_linkage_matches_scipy():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    from scipy.spatial.distance import squareform

    g = np.random.default_rng(5)
    for k in (2, 3, 6, 9):
        x = g.normal(size=(k, 3))
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        order, merges = plots.average_linkage(d)
        assert sorted(order) == list(range(k))
        ref = hierarchy.linkage(squareform(d, checks=False), method="average")
        np.testing.assert_allclose([h for *_, h in merges], ref[:, 2], rtol=1e-12)


def test_result_json_is_versioned_and_the_csv_is_long_form(tmp_path):
    res = _result(_line(3), seeds=(4, 7), spread=0.05)
    data = json.loads(res.to_json(tmp_path / "r.json"))
    assert data["format"] == "fisherx.task_distances" and data["schema_version"] == SCHEMA_VERSION
    rows = res.to_csv().splitlines()
    assert rows[0] == "arch,seed,source,target,metric,value" and len(rows) == 1 + 2 * 3 * 3
    assert rows[-1].startswith("mlp,7,T2,T2,ftd,")
    old = {k: v for k, v in data.items() if k not in ("format", "schema_version")}  # written before the version
    (tmp_path / "old.json").write_text(json.dumps(old))
    np.testing.assert_array_equal(
        TaskDistanceResult.from_json(tmp_path / "old.json").distances["mlp"], res.distances["mlp"]
    )
    (tmp_path / "new.json").write_text(json.dumps({**data, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ValueError, match=r"new\.json: schema_version 2 is newer"):
        TaskDistanceResult.from_json(tmp_path / "new.json")
    (tmp_path / "other.json").write_text(json.dumps({**data, "format": "fisherx.genotype"}))
    with pytest.raises(ValueError, match="other.json: format 'fisherx.genotype'"):
        TaskDistanceResult.from_json(tmp_path / "other.json")
