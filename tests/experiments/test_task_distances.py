"""task_distances end to end on the built-in digits: structure of the matrices, outputs, CLI, and resume after
``kill -9``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fisherx
from fisherx.experiments.distances import TaskDistanceResult
from fisherx.experiments.plots import classical_mds
from fisherx.io.cache import Cache
from fisherx.models import EpsilonWarning
from fisherx.tasks import preset

ARGS = dict(archs=["mlp"], seeds=[0, 1], epochs=6, epsilon=0.25, fisher_samples=150, progress=False)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return fisherx.task_distances(preset("digits"), cache_dir=cache, **ARGS), cache


def test_structure_of_the_matrices(run):
    result, _ = run
    d = result.distances["mlp"]
    assert d.shape == (2, 4, 4) and result.accuracies["mlp"].shape == (2, 4)
    assert np.all(np.diagonal(d, axis1=1, axis2=2) == 0.0)
    assert np.all((d >= 0.0) & (d <= 1.0))
    off = ~np.eye(4, dtype=bool)
    assert np.all(d[:, off] > 0.0)
    assert np.abs(d - d.transpose(0, 2, 1)).max() > 1e-3  # asymmetric, as FTD is
    std = result.std("mlp")
    assert np.all(std >= 0.0) and std[off].max() > 0.0
    np.testing.assert_allclose(result.mean("mlp"), d.mean(0))
    assert np.all((result.accuracies["mlp"] > 0.5) & (result.accuracies["mlp"] <= 1.0))
    assert result.head_mode == "shared" and result.head_width == 10
    assert result.config["head"] == {"mode": "shared", "width": 10, "refit_epochs": None}
    assert result.stats == {"network.miss": 8, "network.store": 8, "fisher.miss": 32, "fisher.store": 32}


def test_outputs(run, tmp_path):
    result, _ = run
    table = result.table()
    assert "rows = source, columns = target" in table and table.count(" ± ") == 17 and "head: shared" in table
    back = TaskDistanceResult.from_json(result.to_json(tmp_path / "r.json"))
    np.testing.assert_array_equal(back.distances["mlp"], result.distances["mlp"])
    assert json.loads((tmp_path / "r.json").read_text())["closest"]["mlp"] == result.closest("mlp")
    csv = result.to_csv(tmp_path / "d.csv").splitlines()
    # Long form: fixed columns, one row per (arch, seed, source, target).
    assert csv[0] == "arch,seed,source,target,metric,value" and len(csv) == 1 + 2 * 4 * 4
    assert csv[2].split(",")[:5] == ["mlp", str(result.seeds[0]), "T0", "T1", "ftd"]
    assert float(csv[2].split(",")[5]) == result.distances["mlp"][0, 0, 1]
    for plot in (result.plot_heatmaps, result.plot_atlas):
        p = tmp_path / f"{plot.__name__}.png"
        fig = plot(p)
        assert fig.axes and p.read_bytes()[:8] == PNG and p.stat().st_size > 5000


def test_same_run_again_recomputes_nothing_and_other_metrics_reuse_fishers(run):
    result, cache = run
    again = fisherx.task_distances(preset("digits"), cache_dir=cache, **ARGS)
    assert again.stats == {"network.hit": 8, "fisher.hit": 32}
    np.testing.assert_array_equal(again.distances["mlp"], result.distances["mlp"])
    cos = fisherx.task_distances(preset("digits"), cache_dir=cache, metric="cosine", **ARGS)
    assert cos.stats == {"network.hit": 8, "fisher.hit": 32}
    c = cos.distances["mlp"]
    np.testing.assert_allclose(np.diagonal(c, axis1=1, axis2=2), 1.0, atol=1e-12)
    assert np.all((c > 0) & (c <= 1.0 + 1e-12))
    logdet = fisherx.task_distances(preset("digits"), cache_dir=cache, metric="logdet", **ARGS)
    strict = dict(ARGS, epsilon=1e-9)  # ε is not part of any key: the cached networks are judged against it anew
    with pytest.warns(EpsilonWarning, match=r"8 of 8 networks are not ε-approximations .* mlp seed 0 T0: 0\.\d+"):
        fisherx.task_distances(preset("digits"), cache_dir=cache, **strict)
    assert np.all(np.diagonal(logdet.distances["mlp"], axis1=1, axis2=2) == 0.0)


def test_cli_writes_every_output_from_the_cache(run, tmp_path, capsys):
    from fisherx.cli import main
    from fisherx.cli.distances import OUTPUT_FILES

    result, cache = run
    rc = main(
        [
            "distances",
            "--preset",
            "digits",
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
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(cache),
            "--quiet",
        ]
    )
    assert rc == 0
    for f in OUTPUT_FILES:
        assert (tmp_path / f).is_file(), f
    assert "closest source per target" in capsys.readouterr().out
    back = TaskDistanceResult.from_json(tmp_path / "result.json")
    np.testing.assert_array_equal(back.distances["mlp"], result.distances["mlp"])
    assert back.stats == {"network.hit": 8, "fisher.hit": 32}


def test_refit_head_mode(tmp_path):
    t0, _, t2, _ = preset("digits")
    r = fisherx.task_distances(
        [t0, t2],
        archs=["mlp"],
        seeds=[0],
        epochs=2,
        head="refit",
        head_epochs=1,
        epsilon=None,
        cache_dir=tmp_path,
        progress=False,
    )
    assert r.head_mode == "refit" and r.config["head"]["mode"] == "refit"
    d = r.distances["mlp"][0]
    assert d[0, 0] == d[1, 1] == 0.0 and 0 < d[0, 1] <= 1 and 0 < d[1, 0] <= 1
    assert r.stats["head.store"] == 2


def test_argument_errors():
    tasks = preset("digits")
    with pytest.raises(ValueError, match="unknown metric 'kl'"):
        fisherx.task_distances(tasks, metric="kl")
    with pytest.raises(ValueError, match="unknown architecture 'vit'"):
        fisherx.task_distances(tasks, archs=["vit"])
    with pytest.raises(ValueError, match="at least 2 tasks"):
        fisherx.task_distances(tasks[:1])
    from dataclasses import replace

    with pytest.raises(
        ValueError,
        match=r"inputs of one shape and dtype; got T0: \(1, 8, 8\) float32, "
        r"T1: \(1, 16, 16\) float32",
    ):
        fisherx.task_distances([tasks[0], replace(tasks[1], image_size=16)], progress=False)


def test_classical_mds_recovers_points():
    pts = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    xy = classical_mds(d)
    np.testing.assert_allclose(np.linalg.norm(xy[:, None] - xy[None], axis=-1), d, atol=1e-9)


CHILD = textwrap.dedent("""
    import os, signal, sys
    import fisherx
    from fisherx.tasks import preset

    # Die by SIGKILL in the middle of writing the 7th Fisher: its temporary file is written, the rename that would
    # publish it never happens. A kill at a fixed point keeps the test free of timing races.
    real_replace, fishers = os.replace, []
    def replace(src, dst):
        if "/fisher/" in str(dst):
            fishers.append(dst)
            if len(fishers) == 7:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)
    os.replace = replace
    fisherx.task_distances(preset("digits"), cache_dir=sys.argv[1], **eval(sys.argv[2]))
""")


def test_resume_after_kill_9_recomputes_nothing_finished(run, tmp_path):
    cache_dir = tmp_path / "cache"
    child = subprocess.run([sys.executable, "-c", CHILD, str(cache_dir), repr(ARGS)], capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    cache = Cache(cache_dir)
    done = {k: len(cache.entries(k)) for k in ("network", "fisher")}
    assert done == {"network": 4, "fisher": 6}  # seed 0's networks, and 6 of its 16 Fishers
    assert len(list(cache_dir.glob("fisher/*/.*.tmp"))) == 1  # the write cut short left only a temporary file
    resumed = fisherx.task_distances(preset("digits"), cache_dir=cache_dir, **ARGS)
    assert resumed.stats == {
        "network.hit": 4,
        "network.miss": 4,
        "network.store": 4,
        "fisher.hit": 6,
        "fisher.miss": 26,
        "fisher.store": 26,
    }
    # The same result as the uninterrupted run of the same configuration (in another cache, in this process).
    np.testing.assert_allclose(resumed.distances["mlp"], run[0].distances["mlp"], rtol=0, atol=1e-6)


def test_cli_reports_data_problems_in_one_line(tmp_path):
    from fisherx.cli import main

    with pytest.raises(SystemExit, match=r"fisherx distances: the CIFAR-10 source needs data_dir"):
        main(["distances", "--preset", "cifar10", "--out", str(tmp_path), "--quiet"])
    with pytest.raises(SystemExit, match=r"fisherx distances: unknown class 'tench' in imagenet .*expected one of"):
        (tmp_path / "d" / "train" / "cat").mkdir(parents=True)
        (tmp_path / "d" / "val").mkdir()
        main(["distances", "--preset", "imagenet", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path)])
