"""The in-pass bootstrap of fisher_diag (bootstrap=R): every replicate equals the Fisher of the explicitly resampled
data set (sample i repeated w_ri times, one backward per sample, float64) on every layer rule of the engine table;
weights independent of batching; R=0 unchanged; replicates saved and loaded."""

from __future__ import annotations

import warnings
import zlib

import pytest
import torch
from fisher_models import naive_fisher
from test_fisher_engine import CASES
from torch import nn

import fisherx
from fisherx.fisher import register_rule
from fisherx.fisher.bootstrap import poisson_weights

R = 3


def _resampled_fisher(model, x, y, loss, w_r):
    """The explicit resampling loop: the Fisher of the data set in which sample i appears w_ri times."""
    idx = torch.repeat_interleave(torch.arange(x.shape[0]), w_r.long())
    return naive_fisher(model, x[idx], y[idx], loss)


def _check_replicates(f, model, x, y, loss, seed, tol=1e-10):
    w = poisson_weights(seed, 0, x.shape[0], R)
    assert f.n_replicates == R
    torch.testing.assert_close(f.replicate_weights, w.sum(1))
    assert not bool((w == 1).all()), "weights all 1: the replicates would not test the weighting"
    for r in range(R):
        ref = _resampled_fisher(model, x, y, loss, w[r])
        for pname, want in ref.items():
            got = f.replicates[pname][r].double()
            scale = want.norm().item()
            assert scale > 0, f"{pname}: the resampled reference is zero, the case does not test it"
            err = (got - want).norm().item() / scale
            assert err <= tol, f"replicate {r} {pname}: relative error {err:.3g} > {tol}"


# The conv cases also run on the ops' reference backend (devices with no compiled kernel: the rule's unfold path).
PARAMS = [pytest.param(c, "compiled", id=c[0]) for c in CASES] + [
    pytest.param(c, "reference", id=f"{c[0]}-reference") for c in CASES if c[0].startswith(("conv", "mse-conv"))
]


@pytest.mark.parametrize("case,backend", PARAMS)
def test_replicates_equal_explicit_resampling(case, backend, monkeypatch):
    from fisherx import _ops

    if backend == "reference":
        monkeypatch.setattr(_ops, "_backend", lambda t: "reference")
    name, build, inputs, loss = case
    torch.manual_seed(zlib.crc32(name.encode()))
    x, y = inputs(torch.float64)
    model = build().double().eval()
    model(x[:1])  # materialise lazy layers
    seed = zlib.crc32(name.encode()) % 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plain = fisherx.fisher_diag(model, (x, y), loss=loss, progress=False)
        f = fisherx.fisher_diag(model, (x, y), loss=loss, progress=False, bootstrap=R, bootstrap_seed=seed)
    for pname in plain:  # the Fisher itself comes out of the same pass, unchanged
        torch.testing.assert_close(f[pname], plain[pname], rtol=1e-12, atol=0)
    _check_replicates(f, model, x, y, loss, seed)


def test_weights_do_not_depend_on_batching_and_r0_is_unchanged():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(27, 4)).double().eval()
    x, y = torch.randn(11, 1, 5, 5, dtype=torch.float64), torch.randint(0, 4, (11,))
    whole = fisherx.fisher_diag(m, (x, y), progress=False, bootstrap=6, bootstrap_seed=9)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    streamed = fisherx.fisher_diag(m, dl, progress=False, bootstrap=6, bootstrap_seed=9)
    torch.testing.assert_close(streamed.replicates_flat(), whole.replicates_flat(), rtol=1e-12, atol=0)
    other = fisherx.fisher_diag(m, (x, y), progress=False, bootstrap=6, bootstrap_seed=10)
    assert not torch.allclose(other.replicates_flat(), whole.replicates_flat()), "the seed must matter"
    plain = fisherx.fisher_diag(m, (x, y), progress=False)
    zero = fisherx.fisher_diag(m, (x, y), progress=False, bootstrap=0)
    assert plain.replicates is None and zero.replicates is None and zero.n_replicates == 0
    assert "bootstrap" not in zero.meta
    for k in plain:
        assert torch.equal(plain[k], zero[k])
    with pytest.raises(ValueError, match="no bootstrap replicates"):
        plain.replicates_flat()


def test_poisson_weights_are_poisson_and_keyed_by_index():
    w = poisson_weights(3, 0, 4000, 50)
    assert w.shape == (50, 4000) and bool((w >= 0).all()) and bool((w == w.round()).all())
    # Poisson(1): mean 1, variance 1, P(0) = e^-1; 200,000 draws put each within ~5 standard errors.
    assert abs(w.mean().item() - 1) < 0.012 and abs(w.var().item() - 1) < 0.02
    assert abs((w == 0).double().mean().item() - 0.36788) < 0.006
    torch.testing.assert_close(poisson_weights(3, 1000, 5, 50), w[:, 1000:1005])
    assert not torch.equal(poisson_weights(4, 0, 4000, 50), w)


def test_bootstrap_arguments_and_files(tmp_path):
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="bootstrap must be"):
            fisherx.fisher_diag(m, (x, y), bootstrap=bad, progress=False)
    with pytest.raises(TypeError, match="bootstrap_seed must be an int"):
        fisherx.fisher_diag(m, (x, y), bootstrap=2, bootstrap_seed="a", progress=False)
    f = fisherx.fisher_diag(m, (x, y), bootstrap=4, bootstrap_seed=1, progress=False)
    assert f.meta["bootstrap"] == {"replicates": 4, "seed": 1, "weights": "poisson"}
    f.save(tmp_path / "f.fx")
    g = fisherx.FisherDiag.load(tmp_path / "f.fx")
    assert g.n_replicates == 4 and torch.equal(g.replicates_flat(), f.replicates_flat())
    torch.testing.assert_close(g.replicate_weights, f.replicate_weights)
    rep = g.normalized().replicate(3)
    assert abs(rep.trace() - 1) < 1e-6 and rep.meta["replicate"] == 3
    with pytest.raises(ValueError, match="cannot merge Fishers with bootstrap replicates"):
        f.merge(f)
    with pytest.raises(ValueError, match="drew weight 0 for all 1 samples"):
        fisherx.fisher_diag(m, (x[:1], y[:1]), bootstrap=20, progress=False)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return x * self.w


def test_user_rule_without_weights_goes_through_the_fallback():
    # A rule registered without the weights keyword cannot weight samples: its replicates come from the fallback.
    calls = []

    @register_rule(Scaled)
    def scaled(layer, activations, backprops):
        calls.append(1)
        return {"w": (activations[0] * backprops).square().sum(0)}

    torch.manual_seed(3)
    m = nn.Sequential(Scaled(), nn.Linear(4, 3)).double().eval()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    f = fisherx.fisher_diag(m, (x, y), progress=False, bootstrap=R, bootstrap_seed=2)
    _check_replicates(f, m, x, y, "cross_entropy", 2)
    fisherx.fisher_diag(m, (x, y), progress=False)
    assert calls, "the user rule runs without bootstrap"
