"""Gradients of the distance ops: the analytic backward formulas of fisherx/_ops.py against finite differences
(gradcheck, gradgradcheck in float64), through torch.func, and the subgradients chosen where d is not
differentiable (d = 0, zero entries)."""

from __future__ import annotations

import pytest
import torch

import fisherx
from fisherx import _ops


def _pos(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64) + 0.1


def _column_ops(ops: dict) -> dict:
    """The same five cases over a table of column callables (the custom ops, or their differentiable forms)."""
    return {
        "ftd": lambda a, b: ops["ftd_column"](a, b, "a", "b"),
        "cosine": lambda a, b: ops["cosine_column"](a, b, "a", "b"),
        "logdet-normalized": lambda a, b: ops["logdet_column"](a, b, 1e-2, True, "a", "b"),
        "logdet-raw": lambda a, b: ops["logdet_column"](a, b, 1e-2, False, "a", "b"),
        "logdet-tiny-sigma": lambda a, b: ops["logdet_column"](a, b, 1e-8, True, "a", "b"),
    }


RAW = _column_ops({name: getattr(_ops, name) for name in ("ftd_column", "cosine_column", "logdet_column")})
WRAPPED = _column_ops(_ops.differentiable)


@pytest.mark.parametrize("op", list(RAW))
@pytest.mark.parametrize("table", [RAW, WRAPPED], ids=["op", "differentiable"])
def test_gradcheck_and_gradgradcheck(op, table):
    """The registered formulas (the op called directly) and the autograd.Function forms the public API uses."""
    a = _pos(3, 11).requires_grad_()
    b = _pos(11, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(table[op], (a, b))
    assert torch.autograd.gradgradcheck(table[op], (a, b))


def test_row_stats_and_trace_gradients():
    x = _pos(2, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: _ops.row_stats(t)[:, 0], (x,))
    _ops.trace(x).backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("metric", ["ftd", "logdet", "cosine"])
def test_public_distances_backward_and_torch_func(metric):
    """The issue's failure: fisherx.ftd(a, b).backward() and torch.func.grad(ftd) both work and agree with
    gradients of the pure-PyTorch reference formula."""
    a, b = _pos(50, seed=2), _pos(50, seed=3)
    ref = {
        "ftd": lambda x, y: ((x / x.sum()).sqrt() - (y / y.sum()).sqrt()).square().sum().div(2).sqrt(),
        "logdet": lambda x, y: ((x / x.sum() + 1e-8).log() - (y / y.sum() + 1e-8).log()).sum().abs() / x.numel(),
        "cosine": lambda x, y: x @ y / (x.norm() * y.norm()),
    }[metric]
    want_a, want_b = torch.func.grad(ref, argnums=(0, 1))(a, b)
    got_a, got_b = torch.func.grad(lambda x, y: fisherx.distance(x, y, metric), argnums=(0, 1))(a, b)
    torch.testing.assert_close(got_a, want_a, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_b, want_b, rtol=1e-9, atol=1e-12)
    x = a.clone().requires_grad_()
    fisherx.distance(x, b, metric).backward()
    torch.testing.assert_close(x.grad, want_a, rtol=1e-9, atol=1e-12)
    # Second order through torch.func as well.
    hv = torch.func.grad(lambda x: torch.func.grad(lambda t: fisherx.distance(t, b, metric))(x).sum())(a)
    hv_ref = torch.func.grad(lambda x: torch.func.grad(lambda t: ref(t, b))(x).sum())(a)
    torch.testing.assert_close(hv, hv_ref, rtol=1e-7, atol=1e-9)


def test_column_gradients_from_a_list_of_sources():
    srcs = [_pos(20, seed=s).requires_grad_() for s in range(3)]
    tgt = _pos(20, seed=9).requires_grad_()
    fisherx.distance_column(srcs, tgt, "ftd").sum().backward()
    for s in srcs:
        want = torch.func.grad(lambda x: fisherx.ftd(x, tgt.detach()))(s.detach())
        torch.testing.assert_close(s.grad, want, rtol=1e-12, atol=1e-15)
    assert tgt.grad is not None and torch.isfinite(tgt.grad).all()


def test_float32_inputs_get_float32_gradients():
    a = _pos(30).float().requires_grad_()
    b = _pos(30, seed=1).float()
    fisherx.ftd(a, b).backward()
    assert a.grad.dtype == torch.float32 and torch.isfinite(a.grad).all()


def test_ftd_subgradients_at_zero_distance_and_zero_entries():
    """Documented in _ftd_partials: 0 at d = 0; the exact (finite) limit where a_j = b_j = 0; 0 where a_j = 0 < b_j
    (the true one-sided derivative is −∞)."""
    a = _pos(8)
    g = torch.func.grad(fisherx.ftd, argnums=(0, 1))(a, a.clone())
    assert all(torch.equal(t, torch.zeros_like(t)) for t in g)
    # Proportional up to rounding (d ~ 1e-9 or exactly 0): like the gradient of a norm near 0, the direction is
    # whatever the rounding says, but the magnitude stays bounded (|∂d/∂a_j| ≲ 1/(4·A·u_j)), never blown up by 1/d.
    g = torch.func.grad(fisherx.ftd, argnums=(0, 1))(a, 3 * a)
    assert all(torch.isfinite(t).all() and t.abs().max() < 10.0 for t in g)

    a = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([2.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    ga, gb = torch.func.grad(fisherx.ftd, argnums=(0, 1))(a, b)
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    assert ga[3] == 0.0  # a_3 = 0 < b_3
    # a_2 = b_2 = 0: the one-sided finite difference matches the returned derivative.
    h = 1e-7
    bump = a.clone()
    bump[2] += h
    fd = (fisherx.ftd(bump, b) - fisherx.ftd(a, b)).item() / h
    assert ga[2].item() == pytest.approx(fd, rel=1e-5)
    # Disjoint supports (d = 1) with every zero entry facing a positive one: all derivatives are at the boundary.
    ga, _ = torch.func.grad(fisherx.ftd, argnums=(0, 1))(
        torch.tensor([1.0, 0.0]).double(), torch.tensor([0.0, 1.0]).double()
    )
    assert torch.isfinite(ga).all()


def test_logdet_subgradient_at_zero_distance_is_zero():
    a = _pos(6)
    g = torch.func.grad(lambda x: fisherx.distance(x, a, "logdet"))(a)
    assert torch.equal(g, torch.zeros_like(g))


def test_torch_compile_backward():
    a, b = _pos(40), _pos(40, seed=1)
    x = a.clone().requires_grad_()
    torch.compile(lambda s, t: fisherx.ftd(s, t), fullgraph=True)(x, b).backward()
    torch.testing.assert_close(x.grad, torch.func.grad(fisherx.ftd)(a, b), rtol=1e-12, atol=0)
