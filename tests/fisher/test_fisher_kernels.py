"""The Fisher engine's ops (fisherx._ops.sqgrad_gemm, sqgrad_conv, sqgrad_norm) against their references in
fisherx._reference: one table of ops × sample inputs (OpInfo style), float32/float64, non-contiguous and broadcast
views, empty batch; plus torch.library.opcheck on each op, and the same on CUDA when a GPU is present."""

from __future__ import annotations

import os

import pytest
import torch

from fisherx import _ops
from fisherx import _reference as ref


def _poisson(rows, cols, dtype, device):
    """Poisson(1) bootstrap counts, the weights fisher_diag(bootstrap=R) passes to the kernels."""
    return torch.poisson(torch.ones(rows, cols, dtype=dtype)).to(device)


def _gemm_samples(dtype, device):
    r = lambda *s: torch.randn(*s, dtype=dtype, device=device)  # noqa: E731
    yield "basic", (r(5, 1, 7, 13), r(5, 1, 7, 37))
    yield "groups", (r(4, 3, 9, 2), r(4, 3, 9, 5))
    yield "odd-tiles", (r(3, 2, 1, 67), r(3, 2, 1, 70))  # P = 1, sizes past one tile
    yield "k-strided", (r(6, 1, 4, 8), r(6, 1, 11, 4).transpose(2, 3))  # u's K dim not contiguous
    yield "conv-layout", (r(3, 2, 6, 10).transpose(2, 3), r(3, 2, 10, 12))  # g: (B, C, L, O) view of (B, C, O, L)
    yield "sliced", (r(8, 1, 5, 9)[::2], r(8, 1, 5, 6)[::2, :, :, 1:])
    yield "big-p", (r(2, 1, 300, 5), r(2, 1, 300, 3))
    yield "empty-batch", (r(0, 1, 4, 3), r(0, 1, 4, 6))
    yield "zero-positions", (r(3, 1, 0, 3), r(3, 1, 0, 2))
    # Bootstrap weights (R, B): R weighted batch sums from one pass (Poisson counts, a zero row, a transposed view).
    yield "boot", (r(5, 2, 7, 13), r(5, 2, 7, 37), _poisson(3, 5, dtype, device))
    yield "boot-conv-layout", (r(3, 2, 6, 10).transpose(2, 3), r(3, 2, 10, 12), _poisson(3, 4, dtype, device).t()[:3])
    yield (
        "boot-big-p-zero-row",
        (r(2, 1, 300, 5), r(2, 1, 300, 3), torch.cat([_poisson(2, 2, dtype, device), r(1, 2).mul(0)])),
    )
    yield "boot-empty-batch", (r(0, 1, 4, 3), r(0, 1, 4, 6), r(2, 0))
    # R = 9: two blocks of four replicates and a single one; K = 45 ends in a partial tile and a partial strip.
    yield "boot-many-replicates", (r(7, 1, 5, 11), r(7, 1, 5, 45), _poisson(9, 7, dtype, device))


def _norm_samples(dtype, device):
    r = lambda *s: torch.randn(*s, dtype=dtype, device=device)  # noqa: E731
    b, p, c = 5, 6, 7
    yield (
        "bn-nchw",
        (
            r(b, c, p).transpose(1, 2),
            r(b, c, p).transpose(1, 2),
            r(c).expand(b, p, c),
            r(c).abs().add(0.1).expand(b, p, c),
        ),
    )
    yield "ln-rows", (r(b, p, c), r(b, p, c), r(b, p, 1).expand(b, p, c), r(b, p, 1).abs().expand(b, p, c))
    yield "gn-per-sample", (r(b, p, c), r(b, p, c), r(b, 1, c).expand(b, p, c), r(b, 1, c).abs().expand(b, p, c))
    yield "empty-batch", (r(0, p, c), r(0, p, c), r(c).expand(0, p, c), r(c).expand(0, p, c))
    yield (
        "boot-bn-nchw",
        (
            r(b, c, p).transpose(1, 2),
            r(b, c, p).transpose(1, 2),
            r(c).expand(b, p, c),
            r(c).abs().add(0.1).expand(b, p, c),
            _poisson(4, b, dtype, device),
        ),
    )
    yield (
        "boot-ln-rows",
        (
            r(b, p, c),
            r(b, p, c),
            r(b, p, 1).expand(b, p, c),
            r(b, p, 1).abs().expand(b, p, c),
            _poisson(b, 3, dtype, device).t(),
        ),
    )


def _conv_samples(dtype, device):
    r = lambda *s: torch.randn(*s, dtype=dtype, device=device)  # noqa: E731
    # (g, x, kernel, stride, leading padding, dilation, groups); g's spatial size is the conv's output size.
    yield "conv2d-groups-dil", (r(3, 6, 4, 4), r(3, 4, 7, 5), [3, 2], [2, 1], [1, 0], [1, 2], 2)
    yield "conv1d-pad", (r(4, 5, 5), r(4, 3, 9), [3], [2], [2], [1], 1)
    yield "conv3d", (r(2, 4, 4, 2, 4), r(2, 2, 4, 5, 5), [2, 3, 2], [1, 2, 1], [1, 0, 1], [1, 1, 2], 2)
    yield "x-channels-last", (r(3, 5, 6, 6), r(3, 6, 6, 4).permute(0, 3, 1, 2), [3, 3], [1, 1], [1, 1], [1, 1], 1)
    yield "same-asymmetric", (r(2, 3, 6, 6), r(2, 2, 6, 6), [2, 2], [1, 1], [0, 0], [1, 1], 1)  # right pad only
    yield "empty-batch", (r(0, 4, 3, 3), r(0, 2, 5, 5), [3, 3], [1, 1], [0, 0], [1, 1], 1)
    yield (
        "boot-conv2d-groups-dil",
        (r(3, 6, 4, 4), r(3, 4, 7, 5), [3, 2], [2, 1], [1, 0], [1, 2], 2, _poisson(5, 3, dtype, device)),
    )
    yield (
        "boot-conv3d",
        (
            r(2, 4, 4, 2, 4),
            r(2, 2, 4, 5, 5),
            [2, 3, 2],
            [1, 2, 1],
            [1, 0, 1],
            [1, 1, 2],
            2,
            _poisson(3, 2, dtype, device),
        ),
    )


OPS = [
    ("sqgrad_gemm", _ops.sqgrad_gemm, ref.sqgrad_gemm, _gemm_samples),
    ("sqgrad_norm", _ops.sqgrad_norm, ref.sqgrad_norm, _norm_samples),
    ("sqgrad_conv", _ops.sqgrad_conv, ref.sqgrad_conv, _conv_samples),
]


def _cases(device):
    out = []
    for name, op, reference, samples in OPS:
        for dtype in (torch.float32, torch.float64):
            for sname, _ in samples(dtype, "cpu"):
                out.append(
                    pytest.param(
                        name,
                        op,
                        reference,
                        samples,
                        dtype,
                        sname,
                        device,
                        id=f"{name}-{sname}-{str(dtype)[6:]}-{device}",
                    )
                )
    return out


def _check(op, reference, samples, dtype, sname, device):
    args = dict(samples(dtype, device))[sname]
    got = op(*args)
    want = reference(*args)
    assert got.shape == want.shape and got.dtype == dtype and got.device == args[0].device
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("name,op,reference,samples,dtype,sname,device", _cases("cpu"))
def test_op_matches_reference(name, op, reference, samples, dtype, sname, device):
    torch.manual_seed(0)
    _check(op, reference, samples, dtype, sname, device)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,op,reference,samples,dtype,sname,device", _cases("cuda"))
def test_op_matches_reference_cuda(name, op, reference, samples, dtype, sname, device):
    torch.manual_seed(0)
    _check(op, reference, samples, dtype, sname, device)


@pytest.mark.parametrize("name,op,reference,samples", [o for o in OPS], ids=[o[0] for o in OPS])
def test_opcheck(name, op, reference, samples):
    torch.manual_seed(0)
    for sname, args in samples(torch.float32, "cpu"):
        if sname in ("basic", "bn-nchw", "conv2d-groups-dil", "boot", "boot-bn-nchw", "boot-conv2d-groups-dil"):
            torch.library.opcheck(op, args)


def test_bad_arguments_are_named():
    g, u = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 5)
    with pytest.raises(ValueError, match="same B, C, P"):
        _ops.sqgrad_gemm(g, u[:, :, :2])
    with pytest.raises(TypeError, match="u is torch.float64"):
        _ops.sqgrad_gemm(g, u.double())
    with pytest.raises(TypeError, match="float32 or float64"):
        _ops.sqgrad_gemm(g.half(), u.half())
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="one shape"):
        _ops.sqgrad_norm(x, x, x[:, :, :1], x)
    with pytest.raises(ValueError, match=r"weights must have shape \(R, B\) with B = 2"):
        _ops.sqgrad_gemm(g, u, torch.ones(3, 5))
    with pytest.raises(TypeError, match="weights is torch.float64"):
        _ops.sqgrad_norm(x, x, x, x, torch.ones(3, 2, dtype=torch.float64))


def _status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to reset the peak RSS")
def test_kernel_does_not_materialise_per_sample_gradients():
    # Memory: a batch whose per-sample gradients would take 256·512·4608·4 B = 2.4 GB must run with little more
    # than the output (4.7 MB) allocated: the CPU kernel keeps each sample's tile in registers. The peak RSS is
    # reset first (ru_maxrss would keep an earlier test's peak and make this check vacuous).
    g = torch.randn(256, 1, 4, 512)
    u = torch.randn(256, 1, 4, 4608)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    out = _ops.sqgrad_gemm(g, u)
    grown_mb = (_status_kb("VmHWM") - before) / 1024
    assert out.shape == (1, 512, 4608)
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"


_ISA_SCRIPT = r"""
import torch
from fisherx import _ops
from fisherx import _reference as ref

g = torch.Generator().manual_seed(3)
for dtype in (torch.float32, torch.float64):
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    # Odd sizes around the micro-tile (6 rows, 2 registers of columns), positions > 1, weights.
    for B, C, P, M, K in [(5, 1, 1, 7, 33), (3, 2, 9, 13, 17), (4, 1, 1, 1, 1)]:
        gg = torch.randn(B, C, P, M, generator=g, dtype=dtype)
        uu = torch.randn(B, C, P, K, generator=g, dtype=dtype)
        w = torch.rand(9, B, generator=g, dtype=dtype)  # two blocks of four replicates and one more
        for weights in (None, w):
            got, want = _ops.sqgrad_gemm(gg, uu, weights), ref.sqgrad_gemm(gg, uu, weights)
            torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
    x = torch.randn(3, 4, 11, 9, generator=g, dtype=dtype)
    gc = torch.randn(3, 6, 9, 7, generator=g, dtype=dtype)
    args = ([3, 3], [1, 1], [0, 0], [1, 1], 2)
    got, want = _ops.sqgrad_conv(gc, x, *args), ref.sqgrad_conv(gc, x, *args)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
print("ok")
"""


@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_every_cpu_micro_kernel_width_matches_reference(isa):
    """The squared-GEMM micro-kernel has one version per register width (AVX-512, AVX2, baseline SSE2), picked at
    run time; FISHERX_CPU_ISA forces a narrower one, so each version this CPU can run is checked here (the widest
    by the rest of this file)."""
    import subprocess
    import sys

    env = dict(os.environ, FISHERX_CPU_ISA=isa)
    res = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
