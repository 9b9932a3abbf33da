"""The authors' code's estimator (fisherx.fisher.minibatch) against a naive loop of ordinary backward passes."""

import pytest
import torch
from torch import nn

import fisherx
from fisherx.fisher.minibatch import fisher_minibatch


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 5)).to(
        dtype
    )


def _data(n, dtype):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 5, 5, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g)


def _naive(model, x, y, batch, first_axis_mean=True, weights=None):
    """One ordinary backward of the batch-mean loss per mini-batch, p.grad² summed (weighted), then averaged."""
    model.eval()
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    total = 0.0
    for m, s in enumerate(range(0, x.shape[0], batch)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[s : s + batch]), y[s : s + batch]).backward()
        w = 1.0 if weights is None else float(weights[m])
        total += w
        for n, p in model.named_parameters():
            acc[n] += w * p.grad**2
    return {n: (a / total).mean(0) if first_axis_mean and a.dim() >= 1 else a / total for n, a in acc.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,batch", [(37, 10), (10, 10), (7, 10), (23, 1), (40, 64)])
def test_matches_naive_loop(dtype, n, batch):
    model = _model(dtype)
    x, y = _data(n, dtype)
    x = x.transpose(2, 3).contiguous().transpose(2, 3)  # a non-contiguous input
    ref = _naive(model, x, y, batch)
    got = fisher_minibatch(model, (x, y), batch_size=batch)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape
        torch.testing.assert_close(got[k], ref[k], rtol=tol, atol=tol * float(ref[k].abs().max()))
    assert got.n_samples == n and got.meta["n_batches"] == -(-n // batch)
    assert got.meta["kind"] == "minibatch_authors"


def test_without_first_axis_mean_and_shapes():
    model = _model(torch.float64)
    x, y = _data(25, torch.float64)
    got = fisher_minibatch(model, (x, y), first_axis_mean=False)
    ref = _naive(model, x, y, 10, first_axis_mean=False)
    for k in ref:
        assert got[k].shape == dict(model.named_parameters())[k].shape
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=0)
    reduced = fisher_minibatch(model, (x, y))
    assert reduced["4.weight"].shape == (27,) and reduced["4.bias"].shape == ()


def test_routed_from_fisher_diag_and_differs_from_empirical():
    model = _model(torch.float64)
    x, y = _data(30, torch.float64)
    a = fisherx.fisher_diag(model, (x, y), kind="minibatch_authors", progress=False)
    b = fisher_minibatch(model, (x, y))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    emp = fisherx.fisher_diag(model.eval(), (x, y), progress=False)
    # batch-mean gradients squared are not per-sample gradients squared: the totals differ
    assert abs(float(emp["4.weight"].mean(0).sum()) - float(a["4.weight"].sum())) > 1e-6


def test_bootstrap_matches_weighted_naive_loop():
    from fisherx.fisher.bootstrap import poisson_weights

    model = _model(torch.float64)
    x, y = _data(53, torch.float64)
    got = fisher_minibatch(model, (x, y), bootstrap=4, bootstrap_seed=3)
    w = poisson_weights(3, 0, 6, 4)  # (R, batches): batch m's weight in replicate r
    for r in range(4):
        ref = _naive(model, x, y, 10, weights=w[r])
        rep = got.replicate(r)
        for k in ref:
            torch.testing.assert_close(rep[k], ref[k], rtol=1e-10, atol=0)
    torch.testing.assert_close(got.replicate_weights, w.sum(1))


def test_bad_input_is_named():
    model = _model(torch.float64)
    x, y = _data(5, torch.float64)
    with pytest.raises(ValueError, match="batch_size"):
        fisher_minibatch(model, (x, y), batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        fisher_minibatch(model, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="samples"):
        fisher_minibatch(model, (x, y[:3]))
    with pytest.raises(ValueError, match="minibatch_authors"):
        fisherx.fisher_diag(model, (x, y), kind="minibatch")
