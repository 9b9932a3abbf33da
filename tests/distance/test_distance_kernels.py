"""Every distance kernel against its pure-PyTorch reference, driven by ONE table of ops x sample inputs.

In the manner of PyTorch's OpInfo tests: ``OPS`` lists the ops (kernel, reference, tolerance, input domain) and
``SAMPLES`` the sample inputs (length, rows K, memory layout). A test is generated for every (op, sample, dtype,
device). A new op is one row of ``OPS``; a new kind of input is one entry of ``LAYOUTS`` or ``SAMPLES``.

Tolerances. The kernels widen float32 input to float64 (exactly) and accumulate in float64, and so does every
reference, so kernel and reference compute the same real number from the same exact inputs, for both input dtypes.
They differ only in float64 rounding: summation order (fixed chunks vs torch's pairwise sum) and, for FTD, the
one-pass formula vs the difference form. A float64 sum of n terms is off by at most about n·2⁻⁵³·Σ|x|, i.e.
~1.2e-10 relative for n = 2**20; RTOL = 1e-9 covers that worst case with room. One exception: the CPU FTD kernel
forms each term of float32 input in float32 (q = (a − b)/(√a + √b), ≤ 3e-7 relative per q², csrc/cpu/distance.cpp),
documented to 1e-6 relative; its row says so in ``cpu_float32_rtol``, and tests/distance/test_distance.py checks
that bound on tiny distances and extreme scales.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from fisherx import _ops
from fisherx import _reference as ref

# ----------------------------------------------------------------------------------------------------------------
# Sample inputs: (sources (K, n), target (n,)) in a given memory layout.

SIZES = (1, 7, 4097, 2**20 + 3)
KS = (1, 3)


def _contiguous(base_src, base_tgt, n):
    return base_src(0, 0), base_tgt(0)


def _row_padded(base_src, base_tgt, n):
    # Rows further apart than n: row_stride = n + 5, stride 1 (a slice of a wider matrix).
    return base_src(0, 5)[:, :n], base_tgt(0)


def _transposed(base_src, base_tgt, n):
    # Columns of a row-major (n, K + 2) matrix: element stride K + 2, row stride 1 (also for K = 1).
    s = base_src(0, 0)
    k = s.shape[0]
    m = torch.cat([s[:1], s, s[:1]]).t().contiguous()  # (n, K + 2), row-major
    return m[:, 1 : k + 1].t(), base_tgt(0)


def _step(base_src, base_tgt, n):
    # Every 2nd entry of the sources, every 3rd of the target: non-unit strides on both operands.
    return base_src(1, 0)[:, ::2], base_tgt(2)[::3]


LAYOUTS: dict[str, Callable] = {
    "contiguous": _contiguous,
    "row_padded": _row_padded,
    "transposed": _transposed,
    "step": _step,
}


@dataclass(frozen=True)
class Sample:
    n: int
    k: int
    layout: str

    @property
    def id(self) -> str:
        return f"n{self.n}-K{self.k}-{self.layout}"


def _samples() -> list[Sample]:
    out = []
    for n in SIZES:
        if n > 10**6:
            # The 2**20 + 3 vectors cost most of the run: one contiguous single row and one strided column (the
            # many-chunk reduction, and 64-bit offsets past 2**21 elements), not every combination.
            out += [Sample(n, 1, "contiguous"), Sample(n, 3, "step")]
            continue
        out += [Sample(n, k, lay) for k in KS for lay in LAYOUTS]
    return out


SAMPLES = _samples()


def _values(gen: torch.Generator, shape: tuple[int, ...], domain: str, dtype, n: int) -> torch.Tensor:
    """Fisher-like values: spread over ~10 orders of magnitude, ~10% exact zeros; 'signed' flips half the signs."""
    x = torch.exp(3.0 * torch.randn(shape, generator=gen, dtype=torch.float64))
    x = x * (torch.rand(shape, generator=gen, dtype=torch.float64) > 0.1)
    if n == 1 or domain == "positive":
        x = x + 1e-3  # no zero trace: the one-element and strictly positive cases
    if domain == "signed":
        x = x * torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return x.to(dtype)


@functools.lru_cache(maxsize=4)  # the ops of one sample run one after another (see _cases): generate once
def make_sample(sample: Sample, domain: str, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh random inputs, the same for a given sample id (seeded from it), laid out as the sample says."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{sample.id}-{domain}-{dtype}".encode()))
    n, k = sample.n, sample.k

    def base_src(step_extra: int, pad: int) -> torch.Tensor:
        m = n * (step_extra + 1) + pad
        return _values(gen, (k, m), domain, dtype, n).to(device)

    def base_tgt(step_extra: int) -> torch.Tensor:
        return _values(gen, (n * (step_extra + 1),), domain, dtype, n).to(device)

    src, tgt = LAYOUTS[sample.layout](base_src, base_tgt, n)
    assert src.shape == (k, n) and tgt.shape == (n,)
    if sample.layout != "contiguous" and n > 1:
        assert src.stride() != (n, 1) or tgt.stride() != (1,), "the layout must really be non-contiguous"
    return src, tgt


# ----------------------------------------------------------------------------------------------------------------
# The ops table.

RTOL = {torch.float32: 1e-9, torch.float64: 1e-9}  # see the module docstring: float64 accumulation for both
# (logdet sums the logs as exponents plus a product of mantissas, one log per 256 entries: still one 2^-53 rounding
# per entry, so the same bound holds.)


def _sum_scale(src, tgt):
    return src.to(torch.float64).abs().sum(dim=-1)


def _logdet_scale(sigma2, normalize):
    # The sum of logs cancels between source and target: bound the error by the sum of the |log| terms.
    def scale(src, tgt):
        a, b = src.to(torch.float64), tgt.to(torch.float64)
        if normalize:
            a, b = a / a.sum(dim=1, keepdim=True), b / b.sum()
        return ((a + sigma2).log().abs() + (b + sigma2).log().abs()).mean(dim=1)

    return scale


@dataclass(frozen=True)
class OpInfo:
    name: str
    kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    reference: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    domain: str = "fisher"  # "fisher": non-negative with zeros; "signed": any sign; "positive": > 0
    # Absolute error allowed = RTOL · error_scale(src, tgt) (defaults to the result itself, i.e. relative).
    error_scale: Callable | None = None
    atol: float = 0.0
    kwargs: dict = field(default_factory=dict)
    cpu_float32_rtol: float | None = None  # where the CPU kernel forms float32 terms in float32 (module docstring)
    # The same op over a list of K (n,) tensors read in place (_ops.in_place), where the op has that form.
    in_place: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor] | None = None


def _logdet(sigma2, normalize):
    return dict(
        kernel=lambda s, t: _ops.logdet_column(s, t, sigma2, normalize, "sources", "target"),
        in_place=lambda s, t: _ops.in_place["logdet_column"](s, t, sigma2, normalize, "sources", "target"),
        reference=lambda s, t: ref.logdet_column(s, t, sigma2, normalize),
        error_scale=_logdet_scale(sigma2, normalize),
        # The unit-trace entry a·(1/A) is rounded once (2^-53 relative) before the log, which turns that into an
        # absolute error of ~1.1e-16 however small the log itself is (log(1 + 1e-8) for one-element vectors).
        atol=1e-15,
    )


OPS = [
    OpInfo(
        "trace",
        kernel=lambda s, t: _ops.trace(t),
        reference=lambda s, t: t.to(torch.float64).sum(),
        domain="signed",
        error_scale=lambda s, t: t.to(torch.float64).abs().sum(),
    ),
    OpInfo(
        "trace_2d",
        kernel=lambda s, t: _ops.trace(s),
        reference=lambda s, t: s.to(torch.float64).sum(),
        domain="signed",
        error_scale=lambda s, t: s.to(torch.float64).abs().sum(),
    ),
    OpInfo(
        "row_stats",
        kernel=lambda s, t: _ops.row_stats(s),
        reference=lambda s, t: ref.row_stats(s),
        domain="signed",
        error_scale=lambda s, t: _sum_scale(s, t)[:, None],
    ),
    OpInfo(
        "ftd_column",
        kernel=lambda s, t: _ops.ftd_column(s, t, "sources", "target"),
        in_place=lambda s, t: _ops.in_place["ftd_column"](s, t, "sources", "target"),
        reference=lambda s, t: ref.ftd_column(s, t),
        atol=1e-12,
        cpu_float32_rtol=1e-6,
    ),
    OpInfo(
        "cosine_column",
        kernel=lambda s, t: _ops.cosine_column(s, t, "sources", "target"),
        in_place=lambda s, t: _ops.in_place["cosine_column"](s, t, "sources", "target"),
        reference=lambda s, t: ref.cosine_column(s, t),
        atol=1e-12,
    ),
    OpInfo("logdet_column-normalized", **_logdet(1e-8, True)),
    OpInfo("logdet_column-raw", **_logdet(1e-8, False)),
    OpInfo("logdet_column-sigma0.5", **_logdet(0.5, True)),
]

DTYPES = (torch.float32, torch.float64)


def _has_cuda() -> bool:
    return torch.cuda.is_available()


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA device")]
    ),
]


def _cases():
    # Sample-major order, so the ops of one sample share its (cached) inputs.
    for dev in DEVICES:
        for sample in SAMPLES:
            for dtype in DTYPES:
                for op in OPS:
                    yield pytest.param(
                        op,
                        sample,
                        dtype,
                        dev.values[0],
                        marks=dev.marks,
                        id=f"{op.name}-{sample.id}-{str(dtype)[6:]}-{dev.id}",
                    )


@pytest.mark.parametrize("op,sample,dtype,device", list(_cases()))
def test_kernel_matches_reference(op: OpInfo, sample: Sample, dtype, device):
    src, tgt = make_sample(sample, op.domain, dtype, device)
    got = op.kernel(src, tgt)
    want = op.reference(src, tgt)
    assert got.dtype == torch.float64, "every kernel returns float64"
    assert got.device == src.device
    assert got.shape == want.shape
    assert torch.isfinite(want).all(), "the sample must be valid input"
    scale = op.error_scale(src, tgt) if op.error_scale else want.abs()
    err = (got - want).abs()
    rtol = op.cpu_float32_rtol if op.cpu_float32_rtol and (device, dtype) == ("cpu", torch.float32) else RTOL[dtype]
    bound = rtol * scale + op.atol
    assert (err <= bound).all(), f"max error {err.max().item():.3e}, allowed {bound.min().item():.3e}"


IN_PLACE_CASES = [c for c in _cases() if c.values[0].in_place is not None]


@pytest.mark.parametrize("op,sample,dtype,device", IN_PLACE_CASES)
def test_in_place_list_matches_the_matrix_kernel_exactly(op: OpInfo, sample: Sample, dtype, device):
    """The rows of the sample as K separate tensors (same strides) read through the address table: the same
    kernel loop over the same numbers, so bit-for-bit the (K, n) result."""
    src, tgt = make_sample(sample, op.domain, dtype, device)
    assert op.in_place is not None
    assert torch.equal(op.in_place(list(src.unbind(0)), tgt), op.kernel(src, tgt))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("op", [o for o in OPS if o.in_place is not None], ids=lambda o: o.name)
def test_in_place_list_of_mixed_layouts_matches_reference(op: OpInfo, dtype):
    """Rows with different strides (a column of a matrix, a contiguous vector, every 3rd entry of another): the
    non-contiguous ones are copied, so the table holds rows of one stride; the values match the reference."""
    n = 1001
    gen = torch.Generator().manual_seed(3)
    wide = _values(gen, (n, 4), op.domain, dtype, n)
    rows = [wide[:, 1], _values(gen, (n,), op.domain, dtype, n), _values(gen, (3 * n,), op.domain, dtype, n)[::3]]
    tgt = wide[:, 2]
    assert op.in_place is not None
    got = op.in_place(rows, tgt)
    want = op.reference(torch.stack(rows), tgt)
    scale = op.error_scale(torch.stack(rows), tgt) if op.error_scale else want.abs()
    rtol = op.cpu_float32_rtol if op.cpu_float32_rtol and dtype == torch.float32 else RTOL[dtype]
    assert ((got - want).abs() <= rtol * scale + op.atol).all(), (got, want)
    assert [r.stride(0) for r in rows] == [4, 1, 3], "the input list itself is left as it was"


@pytest.mark.parametrize("op", [o for o in OPS if o.in_place is not None], ids=lambda o: o.name)
def test_in_place_empty_list_still_checks_the_target(op: OpInfo):
    assert op.in_place is not None
    assert op.in_place([], torch.rand(5, dtype=torch.float64)).shape == (0,)
    with pytest.raises(ValueError, match="target contains NaN"):
        op.in_place([], torch.tensor([1.0, float("nan")], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------------------
# The table must really exercise what it claims to.


def test_table_covers_every_kernel_op():
    """Every distance op (the fisherx::* custom ops of the distance section of _ops.py) has a row in OPS."""
    names = {op.name.split("-")[0] for op in OPS}
    registered = {"row_stats", "ftd_column", "logdet_column", "cosine_column"}
    assert registered <= names, registered - names


@pytest.mark.cuda
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA device")
def test_cuda_tests_run_the_compiled_kernels():
    """On a GPU the CUDA rows above must run the compiled kernels, not the reference fallback (which would make
    kernel-vs-reference a comparison of the reference with itself)."""
    assert _ops.build_info()["cuda"], "this build has no CUDA kernels: build with FISHERX_CUDA=ON"
    assert _ops.cuda_kernels_usable(0)
    assert _ops._backend(torch.ones(1, device="cuda")) == "cuda"


@pytest.mark.parametrize(
    "op", [o for o in OPS if o.name.endswith("_column") or "logdet" in o.name], ids=lambda o: o.name
)
def test_cpu_result_does_not_depend_on_thread_count(op):
    """Fixed chunks reduced in order: 1 and 2 threads give bit-identical results. (Big enough that the kernels
    do use a second thread: they stay serial below ~2**18 elements per thread.)"""
    src, tgt = make_sample(Sample(300_000, 3, "contiguous"), op.domain, torch.float32, "cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op.kernel(src, tgt)
        torch.set_num_threads(2)
        two = op.kernel(src, tgt)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_ftd_one_pass_refinement_path_matches_reference():
    """Traces 1e12 apart and a small distance: the one-pass formula would cancel, the kernel must take its exact
    second pass. Compare against the reference for rows with and without refinement in one column."""
    gen = torch.Generator().manual_seed(7)
    b = torch.rand(4097, generator=gen, dtype=torch.float64) + 0.1
    near = b * (1 + 1e-5 * torch.rand(4097, generator=gen, dtype=torch.float64))
    far = torch.rand(4097, generator=gen, dtype=torch.float64)
    src = torch.stack([1e12 * near, far, 1e-12 * near, near])
    got = _ops.ftd_column(src, b, "sources", "target")
    want = ref.ftd_column(src, b)
    assert torch.allclose(got, want, rtol=1e-8, atol=0), (got, want)
    assert math.isclose(got[0].item(), got[3].item(), rel_tol=1e-8)
