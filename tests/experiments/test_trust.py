"""fisherx.experiments.trust: intervals (with a statistical test of their coverage on synthetic Fishers), the
probability of being the closest task, and the sanity gates on constructed bad cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import fisherx
from fisherx.experiments import trust
from fisherx.fisher import FisherDiag
from fisherx.fisher.bootstrap import poisson_weights


def _binomial_band(p: float, m: int, z: float = 3.29) -> float:
    """Half-width of the two-sided 99.9% normal band of a binomial proportion: z·√(p(1−p)/m)."""
    return z * math.sqrt(p * (1 - p) / m)


def _synthetic_pair(rng, mu_a, mu_b, n_samples, rho=0.5):
    """Per-sample squared gradients of two networks on the same samples: g_a ~ N(0, μ_a), g_b ~ N(0, μ_b),
    correlated per sample (ρ), so E[F_a] = μ_a, E[F_b] = μ_b and the true FTD is ftd(μ_a, μ_b)."""
    z, z2 = rng.standard_normal((2, n_samples, mu_a.size))
    return (np.sqrt(mu_a) * z) ** 2, (np.sqrt(mu_b) * (rho * z + math.sqrt(1 - rho**2) * z2)) ** 2


def _fisher_with_replicates(sq: np.ndarray, w: np.ndarray, seed: int) -> FisherDiag:
    """F = mean of the per-sample squares and its replicates Σ_i w_ri·sq_i / Σ_i w_ri (what bootstrap=R yields)."""
    total = w.sum(1)
    reps = (w @ sq) / total[:, None]
    return FisherDiag(
        {"w": torch.from_numpy(sq.mean(0))},
        sq.shape[0],
        {"bootstrap": {"replicates": w.shape[0], "seed": seed}},
        replicates={"w": torch.from_numpy(reps)},
        replicate_weights=torch.from_numpy(total),
    )


def test_bootstrap_interval_coverage_on_synthetic_fishers():
    # Known structure: the true distance is ftd(μ_a, μ_b). Over M independent data sets, the 90% basic bootstrap
    # interval of the paired replicates must cover it in 90% of them, within the 99.9% binomial band of M draws
    # (±6 points) plus 3 points for the bootstrap's finite-sample error (measured 88-90% at this size). The two
    # networks' per-sample gradients are strongly correlated (ρ = 0.95, as F_ab and F_bb on the same samples are):
    # an unpaired bootstrap (F_bb resampled with other weights) covered 99.6-100% here and fails the test.
    rng = np.random.default_rng(0)
    n, n_samples, reps, m, level = 8, 1000, 80, 250, 0.9
    mu_a = rng.uniform(0.2, 2.0, n)
    mu_b = mu_a * rng.uniform(0.3, 3.0, n)
    true = float(fisherx.ftd(torch.from_numpy(mu_a), torch.from_numpy(mu_b)))
    hits = 0
    for k in range(m):
        sa, sb = _synthetic_pair(rng, mu_a, mu_b, n_samples, rho=0.95)
        w = poisson_weights(k, 0, n_samples, reps).numpy()
        fa, fb = _fisher_with_replicates(sa, w, k), _fisher_with_replicates(sb, w, k)
        draws = trust.replicate_column([fa], fb)[:, 0]
        lo, hi = trust.bootstrap_interval(float(fisherx.ftd(fa, fb)), draws, level)
        hits += lo <= true <= hi
    coverage = hits / m
    band = _binomial_band(level, m)
    assert level - 0.03 - band <= coverage <= level + band, f"coverage {coverage:.3f} of a {level:.0%} interval"


def test_seed_interval_coverage():
    # Seeds' values normal around the truth: Student's t interval is exact, so its coverage over M repetitions is
    # binomial(M, level); 3 seeds make the t quantile (4.30, not 1.96) matter.
    rng = np.random.default_rng(1)
    m, level = 4000, 0.95
    values = 0.3 + 0.05 * rng.standard_normal((3, m))
    lo, hi = np.moveaxis(trust.seed_interval(values, level), -1, 0)
    coverage = float(np.mean((lo <= 0.3) & (hi >= 0.3)))
    assert abs(coverage - level) <= _binomial_band(level, m), coverage
    with pytest.raises(ValueError, match="at least 2 seeds"):
        trust.seed_interval(values[:1])


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 10, 31])
def test_t_quantile(df):
    scipy_stats = pytest.importorskip("scipy.stats")
    for p in (0.9, 0.95, 0.975, 0.995):
        want = scipy_stats.t.ppf(p, df)
        assert abs(trust.t_quantile(p, df) - want) <= 1e-9 * want
        assert abs(trust.t_quantile(1 - p, df) + want) <= 1e-9 * want


def test_percentile_and_basic_intervals():
    draws = np.arange(101, dtype=float)  # quantiles are exact on this grid
    np.testing.assert_allclose(trust.percentile_interval(draws, 0.9), [5.0, 95.0])
    np.testing.assert_allclose(trust.bootstrap_interval(40.0, draws, 0.9), [-15.0, 75.0])  # 2·40 − (95, 5)
    np.testing.assert_allclose(trust.bootstrap_interval(40.0, draws, 0.9, method="percentile"), [5.0, 95.0])
    with pytest.raises(ValueError, match="level must be in"):
        trust.percentile_interval(draws, 1.5)
    with pytest.raises(ValueError, match="method must be one of"):
        trust.bootstrap_interval(1.0, draws, method="bca")


def test_closest_probability_and_verdicts():
    rng = np.random.default_rng(2)
    n = 200
    d = np.full((n, 3, 3), 0.5)
    d[:, np.arange(3), np.arange(3)] = 0.0
    d[:, 1, 0] = 0.2  # T1 always closest to T0
    d[:, 2, 1] = 0.3 + 0.01 * rng.standard_normal(n)  # T2 vs T0 for target T1: a coin flip
    d[:, 0, 1] = 0.3 + 0.01 * rng.standard_normal(n)
    p = trust.closest_probability(d)
    assert p[1, 0] == 1.0 and np.all(np.diag(p) == 0) and np.allclose(p.sum(0), 1.0)
    assert 0.3 < p[0, 1] < 0.7 and abs(p[0, 1] + p[2, 1] - 1) < 1e-12
    v = trust.closest_verdicts(p, ["T0", "T1", "T2"], n)
    assert v["T0"] == "T1 is the closest to T0 in 100% of 200 draws"
    assert v["T1"].startswith("no clear winner for T1 (")
    # cosine is a similarity: the largest value wins
    assert trust.closest_probability(1 - d, metric="cosine")[1, 0] == 1.0


def test_replicate_column_needs_paired_replicates():
    rng = np.random.default_rng(3)
    sa, sb = _synthetic_pair(rng, np.ones(4), np.ones(4) * 2, 50)
    w = poisson_weights(0, 0, 50, 5).numpy()
    fa, fb = _fisher_with_replicates(sa, w, 0), _fisher_with_replicates(sb, w, 1)
    with pytest.raises(ValueError, match="must be paired"):
        trust.replicate_column([fa], fb, names=["F_ab"], target_name="F_bb")
    plain = FisherDiag({"w": torch.ones(4)}, 3)
    with pytest.raises(ValueError, match="plain has no bootstrap replicates"):
        trust.replicate_column([plain], fb, names=["plain"])


def test_concentration_gate_fires_on_a_collapsed_fisher():
    torch.manual_seed(0)
    spread = FisherDiag({"w": torch.rand(10_000) + 0.5}, 10)
    assert trust.fisher_concentration(spread) < 0.01
    collapsed = torch.full((10_000,), 1e-6)
    collapsed[:5] = 1.0  # five parameters carry all the mass
    bad = FisherDiag({"w": collapsed}, 10)
    assert trust.fisher_concentration(bad) > 0.99
    with pytest.warns(trust.TrustWarning, match="collapsed Fisher"):
        trust.check_concentration(bad, "F[T0→T1]")
    with pytest.raises(trust.GateError, match=r"F\[T0→T1\]: 99\.\d% of the Fisher's trace sits in its 10 largest"):
        trust.check_concentration(bad, "F[T0→T1]", action="refuse")
    assert trust.check_concentration(spread, "ok", action="refuse") < 0.01
    with pytest.raises(ValueError, match="gate action must be one of"):
        trust.check_concentration(bad, "x", action="ignore")


def test_concentration_of_a_dead_network():
    # A real collapsed Fisher: every ReLU dead (first-layer bias −100) and one label, so only the output biases
    # move the loss and class 0's bias carries ~90% of the trace; the same network alive spreads it out.
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = torch.randn(200, 20), torch.zeros(200, dtype=torch.long)
    healthy = fisherx.fisher_diag(m, (x, torch.randint(0, 10, (200,))), progress=False)
    with torch.no_grad():
        m[0].bias.fill_(-100.0)
    collapsed = fisherx.fisher_diag(m, (x, y), progress=False)
    assert trust.fisher_concentration(healthy) < 0.2
    assert trust.fisher_concentration(collapsed) > 0.8
    with pytest.warns(trust.TrustWarning, match="dead: .* collapsed Fisher"):
        trust.check_concentration(collapsed, "dead")


def test_self_distance_gate():
    trust.check_self_distance([0.0, 0.0, 1e-9], "ftd", "d[T0,T0]", action="refuse")
    trust.check_self_distance([1.0, 1.0], "cosine", "d[T0,T0]", action="refuse")
    # One broken replicate among many exact ones is enough.
    with pytest.raises(trust.GateError, match=r"d\[T0,T0\] seed 1: ftd\(F, F\) ranges over \[0, 0.2\]"):
        trust.check_self_distance([0.0] * 50 + [0.2], "ftd", "d[T0,T0] seed 1", action="refuse")
    with pytest.warns(trust.TrustWarning, match="d\\[T0,T0\\]"):
        trust.check_self_distance([float("nan"), 0.0], "ftd", "d[T0,T0]")
    trust.check_self_distance([0.3], "ftd", "d[T0,T0]", action="off")  # off: nothing, even when it would fire
