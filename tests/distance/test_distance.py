"""Properties of the public distances (fisherx.ftd, distance, distance_column) and the contract of their ops:
identities, range, asymmetry in the task setting, scale invariance, accuracy of tiny distances, bad input, and
torch.compile / opcheck. Kernel-vs-reference on random inputs lives in tests/distance/test_distance_kernels.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import fisherx
from fisherx import _ops
from fisherx import _reference as ref
from fisherx.distance import get_metric

DTYPES = (torch.float32, torch.float64)
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    ),
]


def fisher(n: int, seed: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """A Fisher-like diagonal: non-negative, spread over orders of magnitude, some exact zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.exp(2.0 * torch.randn(n, generator=g, dtype=torch.float64))
    x[torch.rand(n, generator=g) < 0.05] = 0.0
    return x.to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------------------------
# Identities and range


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_distance_to_itself(dtype, device):
    f = fisher(5000, 0, dtype, device)
    assert fisherx.ftd(f, f).item() == 0.0
    assert fisherx.distance(f, f, "logdet").item() == 0.0
    assert fisherx.distance(f, f, "logdet", normalize=False).item() == 0.0
    assert fisherx.distance(f, f, "cosine").item() == pytest.approx(1.0, abs=1e-14)
    # A Fisher and a positive multiple of it are the same unit-trace Fisher.
    assert fisherx.ftd(f, 3 * f).item() < 1e-7
    assert fisherx.ftd(1e-3 * f, f).item() < 1e-7


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ftd_lies_in_unit_interval(dtype, device):
    fs = [fisher(n, seed, dtype, device) for seed, n in enumerate([1000] * 20)]
    d = torch.stack([fisherx.ftd(a, b) for a in fs for b in fs])
    assert ((d >= 0) & (d <= 1)).all()
    assert d.max() > 0.1  # not all trivially zero
    # The extremes: disjoint supports are at distance exactly 1, and a single entry is at distance 0 from itself.
    a = torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=device)
    b = torch.tensor([0.0, 2.0, 5.0], dtype=dtype, device=device)
    assert fisherx.ftd(a, b).item() == pytest.approx(1.0, abs=1e-15)
    one = torch.tensor([4.0], dtype=dtype, device=device)
    assert fisherx.ftd(one, 2 * one).item() == 0.0


def test_ftd_is_symmetric_in_its_arguments_but_the_task_distance_is_not():
    """d[a, b] = ftd(F_ab, F_bb) and d[b, a] = ftd(F_ba, F_aa) (README.md's definitions). The Hellinger form itself
    is symmetric, ftd(x, y) = ftd(y, x); the task distance is asymmetric because F_ab and F_bb are Fishers on task
    b's data while F_ba and F_aa are on task a's data: different networks on different data give four different Fishers.

    Built properly on a tiny model: softmax regression networks N_a and N_b (different weights, as if trained on
    tasks a and b), test data X_a and X_b from different input distributions, and the empirical diagonal Fisher
    F = (1/N) Σ_i (∂ℓ_i/∂W)² with the per-sample gradient of cross-entropy, ∂ℓ_i/∂W = (p_i − y_i) x_iᵀ.
    """
    g = torch.Generator().manual_seed(3)
    d_in, classes, n = 6, 3, 400

    def data(shift):
        x = torch.randn(n, d_in, generator=g, dtype=torch.float64) + shift
        return x, torch.randint(0, classes, (n,), generator=g)

    def fisher_of(w, x, y):
        p = torch.softmax(x @ w.t(), dim=1)
        e = p - torch.nn.functional.one_hot(y, classes).to(p)
        per_sample = e[:, :, None] * x[:, None, :]  # (N, classes, d_in): per-sample gradients
        # The same through autograd for one sample, so the closed form is not just trusted.
        w1 = w.clone().requires_grad_()
        torch.nn.functional.cross_entropy((x[:1] @ w1.t()), y[:1]).backward()
        torch.testing.assert_close(w1.grad, per_sample[0])
        return per_sample.square().mean(dim=0).reshape(-1)

    w_a = torch.randn(classes, d_in, generator=g, dtype=torch.float64)
    w_b = 3.0 * torch.randn(classes, d_in, generator=g, dtype=torch.float64)
    (x_a, y_a), (x_b, y_b) = data(0.0), data(torch.linspace(-2, 2, d_in, dtype=torch.float64))
    f_aa, f_ab = fisher_of(w_a, x_a, y_a), fisher_of(w_a, x_b, y_b)
    f_ba, f_bb = fisher_of(w_b, x_a, y_a), fisher_of(w_b, x_b, y_b)

    d_ab, d_ba = fisherx.ftd(f_ab, f_bb).item(), fisherx.ftd(f_ba, f_aa).item()
    assert fisherx.ftd(f_ab, f_bb).item() == pytest.approx(fisherx.ftd(f_bb, f_ab).item(), rel=1e-12)
    assert abs(d_ab - d_ba) > 0.02, (d_ab, d_ba)  # 0.145 vs 0.059 with this seed
    # Same numbers from the reference, so the asymmetry is the data's, not the kernel's.
    assert d_ab == pytest.approx(ref.ftd_column(f_ab[None], f_bb).item(), rel=1e-12)
    assert d_ba == pytest.approx(ref.ftd_column(f_ba[None], f_aa).item(), rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Scale invariance

SCALES64 = [1e-30, 1e-12, 1e-3, 0.37, 1.0, 3.0, 7e5, 1e12, 1e30]
SCALES32 = [2.0**-60, 2.0**-20, 2.0**-3, 1.0, 2.0**5, 2.0**40, 2.0**60]  # powers of two: exact in float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,scales", [(torch.float64, SCALES64), (torch.float32, SCALES32)], ids=str)
@pytest.mark.parametrize("metric", ["ftd", "logdet", "cosine"])
def test_scaling_by_a_positive_constant_changes_nothing(metric, dtype, scales, device):
    a, b = fisher(20_000, 1, dtype, device), fisher(20_000, 2, dtype, device)
    base = fisherx.distance(a, b, metric).item()
    # The CPU forms float32 FTD terms in float32 (documented to 1e-6 relative): scaling changes their rounding.
    rel = 1e-6 if (metric, dtype, device) == ("ftd", torch.float32, "cpu") else 1e-9
    for c in scales:
        for sa, sb in [(c, 1.0), (1.0, c), (c, c)]:
            got = fisherx.distance(a * sa, b * sb, metric).item()
            assert got == pytest.approx(base, rel=rel), (c, sa, sb)
    # The column form: every row scaled differently, one launch.
    col = fisherx.distance_column([a * c for c in scales], b, metric)
    torch.testing.assert_close(col, torch.full_like(col, base), rtol=rel, atol=0)


def test_cosine_survives_extreme_scales():
    """Squares of 1e±100 are fine in float64, but the product of the two sums of squares is not: the kernel must
    take the square roots separately."""
    a, b = fisher(1000, 1), fisher(1000, 2)
    base = fisherx.distance(a, b, "cosine").item()
    for c in (1e-100, 1e100):
        assert fisherx.distance(a * c, b * c, "cosine").item() == pytest.approx(base, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Accuracy of tiny distances


def _ftd_mpmath(a: torch.Tensor, b: torch.Tensor) -> float:
    """FTD of the exact values of a and b at 50 significant digits."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        av = [mpmath.mpf(float(v)) for v in a.double().tolist()]
        bv = [mpmath.mpf(float(v)) for v in b.double().tolist()]
        sa, sb = mpmath.fsum(av), mpmath.fsum(bv)
        s = mpmath.fsum((mpmath.sqrt(x / sa) - mpmath.sqrt(y / sb)) ** 2 for x, y in zip(av, bv, strict=True))
        return float(mpmath.sqrt(s / 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("trace_ratio", [1.0, 7.0, 1e-9])
def test_tiny_distance_to_1e6_relative_accuracy(dtype, trace_ratio, device):
    """b differs from a by one part in a million per entry (and, optionally, a different trace): d ~ 1e-7, where the
    identity d² = 1 − Σ√(âb̂) in float32 would return garbage. Compared with a 50-digit computation on the very
    values the kernel sees (after rounding to dtype), to 1e-6 relative accuracy."""
    n = 3000
    g = torch.Generator().manual_seed(11)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    b = trace_ratio * a * (1 + 1e-6 * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1))
    a, b = a.to(dtype), b.to(dtype)
    exact = _ftd_mpmath(a, b)
    assert 1e-9 < exact < 1e-5  # really tiny (float32 rounding of b moves it, but it stays tiny)
    got = fisherx.ftd(a.to(device), b.to(device)).item()
    assert got == pytest.approx(exact, rel=1e-6)
    # The same in a column, next to a far row (the kernel refines rows one by one).
    col = fisherx.distance_column(torch.stack([a, a.flip(0)]).to(device), b.to(device))
    assert col[0].item() == pytest.approx(exact, rel=1e-6)
    assert col[1].item() > 1e-3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spread", [1e-3, 1e-2, 0.1, 1.0])
def test_float32_ftd_holds_1e6_across_the_one_pass_boundary(spread, device):
    """float32 FTD against the float64 reference on the same float32 values, d from ~4e-4 to ~0.35, each against
    traces 1 + 1e-6 … 11 times the target's: the rows under the kernel's refinement ratio r/d² < 4 (where the
    one-pass formula's cancellation amplifies the float32 rounding of its terms, up to 5x) and the refined rows over
    it must all stay within the documented 1e-6 relative."""
    n = 10_007  # odd, and more than two chunks
    g = torch.Generator().manual_seed(5)
    b = torch.rand(n, generator=g, dtype=torch.float64) ** 3  # skewed, with entries near 0
    noise = torch.exp(spread * torch.randn(n, generator=g, dtype=torch.float64))
    traces = 1 + torch.logspace(-6, 1, 71, dtype=torch.float64)
    src = (traces[:, None] * b * noise).to(torch.float32)
    tgt = b.to(torch.float32)
    got = fisherx.distance_column(src.to(device), tgt.to(device)).cpu()
    want = ref.ftd_column(src.double(), tgt.double())
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: a ValueError or TypeError whose message names the problem (and the tensor)


def _t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


GOOD = _t([1.0, 2.0, 3.0])
BAD_INPUTS = [
    # (id, f_a, f_b, exception, message fragments)
    ("nan", _t([1.0, math.nan, 3.0]), GOOD, ValueError, ["f_a", "NaN or Inf"]),
    ("inf-target", GOOD, _t([1.0, math.inf, 3.0]), ValueError, ["f_b", "NaN or Inf"]),
    ("negative", _t([1.0, -2.0, 3.0]), GOOD, ValueError, ["f_a", "1 negative"]),
    ("zero-trace", _t([0.0, 0.0, 0.0]), GOOD, ValueError, ["f_a", "zero trace"]),
    ("empty", _t([]), _t([]), ValueError, ["f_a", "zero trace"]),
    ("length", GOOD, _t([1.0, 2.0]), ValueError, ["length mismatch", "3", "2"]),
    ("device", GOOD, GOOD.to("meta"), ValueError, ["f_a", "cpu", "f_b", "meta"]),
    ("dtype", GOOD, GOOD.double(), TypeError, ["f_a", "float32", "f_b", "float64"]),
    ("int", torch.tensor([1, 2, 3]), GOOD, TypeError, ["f_a", "float32 or float64", "int64"]),
    ("bool", GOOD, torch.ones(3, dtype=torch.bool), TypeError, ["f_b", "float32 or float64", "bool"]),
    ("half", GOOD.half(), GOOD.half(), TypeError, ["f_a", "float16"]),
    ("0-dim", torch.tensor(2.0), GOOD, ValueError, ["f_a", "0-dim"]),
    ("shape", torch.ones(2, 3), torch.ones(3, 2), ValueError, ["shape mismatch", "(2, 3)", "(3, 2)"]),
    ("not-a-tensor", [1.0, 2.0, 3.0], GOOD, TypeError, ["f_a", "list"]),
]


@pytest.mark.parametrize("metric", ["ftd", "logdet", "cosine"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c[0])
def test_bad_input_raises_naming_the_problem(case, metric):
    name, f_a, f_b, exc, fragments = case
    if metric == "logdet" and name in ("zero-trace", "empty"):
        pytest.skip("covered by test_logdet_zero_trace")
    with pytest.raises(exc) as info:
        fisherx.distance(f_a, f_b, metric)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_ftd_names_its_arguments():
    with pytest.raises(ValueError, match="f_bb contains NaN or Inf"):
        fisherx.ftd(GOOD, _t([1.0, math.nan, 1.0]))
    with pytest.raises(ValueError, match="f_ab has 1 negative"):
        fisherx.ftd(_t([1.0, -1.0, 1.0]), GOOD)


def test_column_names_the_bad_row():
    with pytest.raises(ValueError, match="cifar has 3 negative"):
        fisherx.distance_column([GOOD, -GOOD], GOOD, names=["mnist", "cifar"], target_name="digits")
    with pytest.raises(ValueError, match=r"sources\[1\] contains NaN"):
        fisherx.distance_column([GOOD, _t([1.0, math.nan, 1.0])], GOOD)
    with pytest.raises(ValueError, match="digits has zero trace"):
        fisherx.distance_column([GOOD], torch.zeros(3), target_name="digits")


def test_column_names_must_match_the_sources():
    with pytest.raises(ValueError, match="got 3 sources but 1 names"):
        fisherx.distance_column([GOOD, GOOD, GOOD], GOOD, names=["only_one"])


def test_logdet_zero_trace():
    """Normalised logdet needs a trace; the raw form (normalize=False) does not."""
    with pytest.raises(ValueError, match="f_a has zero trace"):
        fisherx.distance(torch.zeros(3), GOOD, "logdet")
    raw = fisherx.distance(torch.zeros(3), GOOD, "logdet", normalize=False, sigma2=0.5)
    want = sum(math.log(0.5 / (v + 0.5)) for v in (1.0, 2.0, 3.0))
    assert raw.item() == pytest.approx(abs(want) / 3, rel=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["ftd", "logdet", "cosine"])
def test_empty_column_still_checks_the_target(metric, device):
    """K = 0 sources is an empty result (no launch of a 0-block grid on CUDA), but a bad target is still an error."""
    t = torch.rand(5, device=device) + 0.1
    out = fisherx.distance_column(torch.empty(0, 5, device=device), t, metric)
    assert out.shape == (0,) and out.dtype == torch.float64 and out.device == t.device
    with pytest.raises(ValueError, match="target has 5 negative"):
        fisherx.distance_column(torch.empty(0, 5, device=device), -t, metric)


@pytest.mark.parametrize("sigma2", [0.0, -1e-8, math.nan, math.inf])
def test_logdet_sigma2_must_be_positive_and_finite(sigma2):
    with pytest.raises(ValueError, match="sigma2 must be positive"):
        fisherx.distance(GOOD, GOOD, "logdet", sigma2=sigma2)


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'kl'.*ftd, logdet, cosine"):
        fisherx.distance(GOOD, GOOD, "kl")


@pytest.mark.parametrize("op", ["ftd_column", "cosine_column"])
def test_ops_reject_wrong_dims(op):
    fn = getattr(_ops, op)
    with pytest.raises(ValueError, match=r"expected src of shape \(K, n\) and tgt of shape \(n,\).*\(3,\)"):
        fn(GOOD, GOOD, "src", "tgt")
    with pytest.raises(ValueError, match=r"\(1, 3\) and \(1, 3\)"):
        fn(GOOD[None], GOOD[None], "src", "tgt")
    with pytest.raises(ValueError, match="row_stats expects a 2-D tensor"):
        _ops.row_stats(GOOD)


# Fisher results as name -> tensor mappings (what the engine's FisherDiag also is)


def _fisher_map(**shapes):
    return {name: torch.rand(shape) + 0.1 for name, shape in shapes.items()}


def test_mappings_are_compared_parameter_by_parameter():
    a = _fisher_map(**{"fc.weight": (4, 3), "fc.bias": (4,)})
    b = _fisher_map(**{"fc.weight": (4, 3), "fc.bias": (4,)})
    flat = fisherx.ftd(torch.cat([t.reshape(-1) for t in a.values()]), torch.cat([t.reshape(-1) for t in b.values()]))
    assert fisherx.ftd(a, b).item() == pytest.approx(flat.item(), rel=1e-12)
    assert fisherx.distance(a, b, "cosine").item() == pytest.approx(
        fisherx.distance(
            torch.cat([t.reshape(-1) for t in a.values()]), torch.cat([t.reshape(-1) for t in b.values()]), "cosine"
        ).item(),
        rel=1e-12,
    )


@pytest.mark.parametrize(
    "b_shapes,fragments",
    [
        ({"fc.weight": (4, 3)}, ["f_ab and f_bb do not cover the same parameters", "only in f_ab: fc.bias"]),
        ({"fc.weight": (4, 3), "fc.bias": (4,), "head.bias": (2,)}, ["only in f_bb: head.bias"]),
        ({"fc.weight": (3, 4), "fc.bias": (4,)}, ["shape mismatch fc.weight: (4, 3) vs (3, 4)"]),
        ({"fc.bias": (4,), "fc.weight": (4, 3)}, ["different order"]),
    ],
    ids=["missing", "extra", "shape", "order"],
)
def test_mismatched_mappings_name_the_parameters(b_shapes, fragments):
    a = _fisher_map(**{"fc.weight": (4, 3), "fc.bias": (4,)})
    b = _fisher_map(**b_shapes)
    with pytest.raises(ValueError) as info:
        fisherx.ftd(a, b)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_mapping_with_bad_values_names_the_argument():
    a = _fisher_map(w=(3,))
    b = {"w": torch.tensor([1.0, -1.0, 1.0])}
    with pytest.raises(ValueError, match="f_bb has 1 negative"):
        fisherx.ftd(a, b)
    with pytest.raises(TypeError, match="float32 or float64"):
        fisherx.ftd(a, {"w": torch.ones(3, dtype=torch.int32)})


# ----------------------------------------------------------------------------------------------------------------
# logdet and cosine against the references


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("sigma2", [1e-12, 1e-8, 1e-2, 10.0])
def test_logdet_matches_reference(sigma2, normalize):
    a, b = fisher(3000, 5), fisher(3000, 6)
    got = fisherx.distance(a, b, "logdet", sigma2=sigma2, normalize=normalize)
    want = ref.logdet_column(a[None], b, sigma2, normalize)[0]
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    # Normalising matters unless the traces agree.
    if normalize:
        assert got.item() != pytest.approx(
            fisherx.distance(a, b, "logdet", sigma2=sigma2, normalize=False).item(), rel=1e-3
        )


def test_logdet_default_sigma2_and_formula():
    a, b = _t([1.0, 3.0], torch.float64), _t([2.0, 2.0], torch.float64)
    s = fisherx.distance.__defaults__[1]
    assert s == fisherx.distance_column.__defaults__[1] == 1e-8
    want = abs(math.log((0.25 + s) / (0.5 + s)) + math.log((0.75 + s) / (0.5 + s))) / 2
    assert fisherx.distance(a, b, "logdet").item() == pytest.approx(want, rel=1e-14)


def test_cosine_matches_reference_and_formula():
    a, b = fisher(3000, 7), fisher(3000, 8)
    want = (a @ b / (a.norm() * b.norm())).item()
    assert fisherx.distance(a, b, "cosine").item() == pytest.approx(want, rel=1e-12)
    assert fisherx.distance(a, b, "cosine").item() == pytest.approx(ref.cosine_column(a[None], b).item(), rel=1e-12)
    assert fisherx.distance(_t([1.0, 0.0]), _t([0.0, 1.0]), "cosine").item() == 0.0


# ----------------------------------------------------------------------------------------------------------------
# torch.compile and opcheck


def _op_args(op: str, src: torch.Tensor, tgt: torch.Tensor) -> tuple:
    return {
        "row_stats": (src,),
        "ftd_column": (src, tgt, "a", "b"),
        "logdet_column": (src, tgt, 1e-8, True, "a", "b"),
        "cosine_column": (src, tgt, "a", "b"),
    }[op]


OP_NAMES = ["row_stats", "ftd_column", "logdet_column", "cosine_column"]


def test_torch_compile_fullgraph_over_every_op():
    src = torch.rand(3, 1000, dtype=torch.float64) + 0.01
    tgt = torch.rand(1000, dtype=torch.float64) + 0.01

    def all_ops(s, t):
        # Some torch work around the ops, so the graph is a real one and not just opaque calls.
        s2, t2 = s * 2.0, t + 0.0
        return (
            torch.ops.fisherx.row_stats(s2)[:, 0].sum(),
            torch.ops.fisherx.ftd_column(s2, t2, "a", "b"),
            torch.ops.fisherx.logdet_column(s2, t2, 1e-8, True, "a", "b"),
            torch.ops.fisherx.cosine_column(s2, t2, "a", "b"),
            fisherx.distance(s2[0], t2, "ftd"),
        )

    compiled = torch.compile(all_ops, fullgraph=True)
    for got, want in zip(compiled(src, tgt), all_ops(src, tgt), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("op", OP_NAMES)
def test_opcheck(op):
    samples = [
        (torch.rand(3, 257) + 0.01, torch.rand(257) + 0.01),
        (torch.rand(2, 514, dtype=torch.float64)[:, ::2] + 0.01, torch.rand(257, dtype=torch.float64) + 0.01),
        (torch.rand(1, 1) + 0.5, torch.rand(1) + 0.5),
    ]
    for src, tgt in samples:
        torch.library.opcheck(getattr(torch.ops.fisherx, op).default, _op_args(op, src, tgt))


# ----------------------------------------------------------------------------------------------------------------
# The metric table


def test_metric_table_entries():
    from fisherx.distance import METRICS, get_metric

    assert list(METRICS) == ["ftd", "logdet", "cosine"]
    assert [METRICS[m].kind for m in METRICS] == ["distance", "distance", "similarity"]
    a = fisher(500, 1)
    for m in METRICS.values():
        # The documented self value and range are what the metric really gives.
        assert fisherx.distance(a, a, m.name).item() == pytest.approx(m.self_value, abs=1e-12)
        v = fisherx.distance(a, fisher(500, 2), m.name).item()
        assert m.range[0] <= v <= m.range[1]
        torch.testing.assert_close(
            m.column(a[None], a.flip(0), 1e-8, True, "a", "b"),
            m.reference(a[None], a.flip(0), 1e-8, True),
            rtol=1e-9,
            atol=1e-12,
        )
    assert get_metric("cosine").closest is torch.argmax and get_metric("ftd").closest is torch.argmin
    with pytest.raises(ValueError, match="unknown metric 'kl'"):
        get_metric("kl")


def test_register_a_toy_metric_and_use_it():
    """A new metric is one table entry: here the L1 distance of unit-trace Fishers, ½·Σ|F̂_a − F̂_b| (in [0, 1]),
    from its pure-PyTorch reference alone; distance() and distance_column() then accept its name."""
    from fisherx.distance import METRICS, Metric, register_metric

    def l1_reference(sources, target, sigma2, normalize):
        a = sources.to(torch.float64)
        b = target.to(torch.float64)
        return 0.5 * (a / a.sum(dim=1, keepdim=True) - b / b.sum()).abs().sum(dim=1)

    def l1_column(rows, target, sigma2, normalize, source_name, target_name):
        _ops.check_column(rows, target, source_name, target_name)
        return l1_reference(rows, target, sigma2, normalize)

    entry = Metric("l1", l1_column, "distance", 0.0, (0.0, 1.0), l1_reference)
    register_metric(entry)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_metric(entry)
        a, b = fisher(300, 4), fisher(300, 5)
        want = 0.5 * (a / a.sum() - b / b.sum()).abs().sum()
        assert fisherx.distance(a, b, "l1").item() == pytest.approx(want.item(), rel=1e-12)
        col = fisherx.distance_column([a, b, 2 * b], b, "l1")
        torch.testing.assert_close(
            col,
            torch.stack([want, torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)]),
            rtol=1e-12,
            atol=1e-15,
        )
        assert torch.func.grad(lambda x: fisherx.distance(x, b, "l1"))(a).shape == a.shape
    finally:
        del METRICS["l1"]
    with pytest.raises(ValueError, match="unknown metric 'l1'"):
        fisherx.distance(a, b, "l1")


def test_check_same_layout_is_public():
    from fisherx.distance import check_same_layout

    check_same_layout({"w": torch.ones(2)}, {"w": torch.zeros(2)}, "x", "y")
    with pytest.raises(ValueError, match="only in y: b"):
        check_same_layout({"w": torch.ones(2)}, {"w": torch.zeros(2), "b": torch.zeros(1)}, "x", "y")


@pytest.mark.parametrize("metric", ["ftd", "logdet", "cosine"])
def test_column_reads_a_list_in_place_without_stacking(metric, monkeypatch):
    """Separate Fishers (FisherDiag results, or tensors) go to the kernel as a table of their addresses: nothing
    is stacked into a (K, n) copy, and the values are those of the stacked column."""
    gen = torch.Generator().manual_seed(11)
    sources = [torch.rand(3001, generator=gen, dtype=torch.float64) for _ in range(4)]
    target = torch.rand(3001, generator=gen, dtype=torch.float64)
    want = fisherx.distance_column(torch.stack(sources), target, metric=metric)

    def no_stack(*args, **kwargs):
        raise AssertionError("distance_column stacked its sources")

    monkeypatch.setattr(torch, "stack", no_stack)
    got = fisherx.distance_column(sources, target, metric=metric)
    assert torch.equal(got, want)


@pytest.mark.parametrize("metric", ["ftd", "logdet", "cosine"])
def test_column_of_a_list_stays_differentiable(metric):
    """A source that requires grad takes the differentiable op, so gradients reach every list entry."""
    gen = torch.Generator().manual_seed(12)
    sources = [torch.rand(50, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2)]
    target = torch.rand(50, generator=gen, dtype=torch.float64, requires_grad=True)
    fisherx.distance_column(sources, target, metric=metric).sum().backward()
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in sources)
    assert target.grad is not None
    with torch.no_grad():  # no gradient wanted: the in-place path, the same values
        assert torch.equal(
            fisherx.distance_column(sources, target, metric=metric),
            fisherx.distance_column(torch.stack(sources), target, metric=metric),
        )


def test_column_of_a_list_names_the_bad_entry():
    rows = [torch.rand(5), torch.rand(6)]
    with pytest.raises(ValueError, match=r"length mismatch: b has 6 entries per row, t has 5"):
        fisherx.distance_column(rows, torch.rand(5), names=["a", "b"], target_name="t")
    with pytest.raises(ValueError, match=r"b is on meta but t is on cpu"):
        fisherx.distance_column(
            [torch.rand(5), torch.rand(5, device="meta")], torch.rand(5), names=["a", "b"], target_name="t"
        )


def _grid(k: int, n: int, seed: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.rand(n, generator=gen, dtype=torch.float64) for _ in range(k)] for _ in range(k)]


@pytest.mark.parametrize("metric", ["ftd", "logdet", "cosine"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_distance_matrix_is_metric_of_f_ab_against_f_bb(metric, k):
    grid = _grid(k, 257, seed=k)
    got = fisherx.distance_matrix(grid, metric=metric)
    assert got.shape == (k, k) and got.dtype == torch.float64
    self_value = get_metric(metric).self_value
    for a in range(k):
        for b in range(k):
            want = self_value if a == b else fisherx.distance(grid[a][b], grid[b][b], metric).item()
            assert got[a, b].item() == pytest.approx(want, rel=1e-12, abs=1e-15), (a, b)
    if k > 1 and metric == "ftd":
        assert not torch.allclose(got, got.T), "FTD is asymmetric: d[a, b] uses F_ab, d[b, a] uses F_ba"


def test_distance_matrix_reads_each_fisher_once(monkeypatch):
    """K² Fishers in, K columns out: every off-diagonal F_ab is a source exactly once, every F_bb a target once,
    and none is stacked into a copy."""
    k = 4
    grid = _grid(k, 101, seed=9)
    entry = get_metric("ftd")
    seen: list[int] = []
    real = entry.column_in_place
    assert real is not None

    def spy(rows, target, *args):
        seen.extend(r.data_ptr() for r in rows)
        seen.append(target.data_ptr())
        return real(rows, target, *args)

    def no_stack(*args, **kwargs):
        raise AssertionError("distance_matrix stacked its Fishers")

    monkeypatch.setattr(torch, "stack", no_stack)
    object.__setattr__(entry, "column_in_place", spy)  # a frozen table entry: set and restore by hand
    try:
        fisherx.distance_matrix(grid)
    finally:
        object.__setattr__(entry, "column_in_place", real)
    assert sorted(seen) == sorted(f.data_ptr() for row in grid for f in row)


def test_distance_matrix_checks_its_grid():
    grid = _grid(3, 11, seed=1)
    with pytest.raises(ValueError, match=r"row 1 \(b\) has 2 entries, K = 3"):
        fisherx.distance_matrix([grid[0], grid[1][:2], grid[2]], names=["a", "b", "c"])
    with pytest.raises(ValueError, match="got 3 rows of Fishers but 2 names"):
        fisherx.distance_matrix(grid, names=["a", "b"])
    grid[2][0] = -grid[2][0]
    with pytest.raises(ValueError, match=r"F\[c→a\] has 11 negative entries"):
        fisherx.distance_matrix(grid, names=["a", "b", "c"])


def test_distance_matrix_is_differentiable():
    grid = _grid(3, 20, seed=2)
    for row in grid:
        for f in row:
            f.requires_grad_()
    fisherx.distance_matrix(grid).sum().backward()
    assert all(f.grad is not None for row in grid for f in row)
