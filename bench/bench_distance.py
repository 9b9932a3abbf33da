"""Distance kernels vs their pure-PyTorch references (pytest-benchmark; not part of the test run).

    pytest bench/bench_distance.py --benchmark-only                 # CPU and, when present, CUDA
    pytest bench/bench_distance.py --benchmark-only -m cuda         # CUDA only (bench/gpu.sh)

One benchmark group per (op, size, device), so pytest-benchmark's table lists kernel and reference side by side;
bench/conftest.py then prints a summary with the speed-up over the reference and, on CUDA, the bandwidth (bytes
the op must read / time) as a fraction of a device-to-device copy of the same bytes (read + write / time).

Implementations per group:
- ``kernel``: the public call (fisherx.ftd / distance / distance_column / _ops.trace), input checks included.
- ``reference``: fisherx._reference, the plain float64 PyTorch formula (trace: ``x.sum(dtype=torch.float64)``).
- CUDA only: ``kernel_raw``, the compiled kernel called directly with preallocated outputs (no checks, no host
  sync), and ``d2d_copy``, ``torch.Tensor.copy_`` of as many bytes as the op reads. On CUDA every implementation
  runs REPS back-to-back calls and one synchronize per timed round (so launch latency overlaps execution as in a
  real pipeline); the summary divides by REPS, the pytest-benchmark table does not.
"""

from __future__ import annotations

import pytest
import torch

import fisherx
from fisherx import _ops
from fisherx import _reference as ref

SIZES = (10**5, 10**7)
DTYPE = torch.float32
RTOL = {torch.float32: 1e-6, torch.float64: 1e-9}[DTYPE]  # each dtype's documented accuracy (docs/distances.md)
REPS = {"cpu": 1, "cuda": 20}
SIGMA2 = 1e-8

# op -> (number of source rows K, kernel(src, tgt), reference(src, tgt)). src is (K, n), tgt is (n,).
OPS = {
    "ftd": (1, lambda s, t: fisherx.ftd(s[0], t), lambda s, t: ref.ftd_column(s, t)),
    "logdet": (
        1,
        lambda s, t: fisherx.distance(s[0], t, "logdet", sigma2=SIGMA2),
        lambda s, t: ref.logdet_column(s, t, SIGMA2, True),
    ),
    "cosine": (1, lambda s, t: fisherx.distance(s[0], t, "cosine"), lambda s, t: ref.cosine_column(s, t)),
    "trace": (0, lambda s, t: _ops.trace(t), lambda s, t: t.sum(dtype=torch.float64)),
    "ftd_column_K8": (8, lambda s, t: fisherx.distance_column(s, t, "ftd"), lambda s, t: ref.ftd_column(s, t)),
}

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    ),
]
IMPLS = ("kernel", "reference", "kernel_raw", "d2d_copy")


def _inputs(k: int, n: int, device: str):
    g = torch.Generator().manual_seed(0)
    src = (torch.rand(max(k, 1), n, generator=g, dtype=DTYPE) + 1e-3).to(device)
    tgt = (torch.rand(n, generator=g, dtype=DTYPE) + 1e-3).to(device)
    return src, tgt


def _raw_cuda(op: str, src: torch.Tensor, tgt: torch.Tensor):
    """The compiled CUDA kernel with everything preallocated: what the op costs on the GPU alone."""
    C = _ops._C.cuda
    k, n = src.shape
    dt = _ops._dtype_name(src)
    dev = src.device
    out = torch.empty(k, dtype=torch.float64, device=dev)
    stats = torch.empty(k + 1, 2, dtype=torch.float64, device=dev)
    ws = _ops._workspace(k, n, dev)
    scale = torch.ones(k + 1, dtype=torch.float64, device=dev)
    stream = _ops._stream(dev)
    (addr, _, rs, s, table), _ = _ops._rows(src, dev)  # the kernels' view of the (K, n) matrix
    rows = (addr, k, n, rs, s, table)
    tg = (tgt.data_ptr(), tgt.stride(0))
    if op == "trace":
        return lambda: C.row_stats(
            dt, tgt.data_ptr(), 1, n, n, tgt.stride(0), 0, stats.data_ptr(), ws.data_ptr(), stream
        )
    if op == "logdet":
        return lambda: C.logdet_column(dt, *rows, *tg, scale.data_ptr(), SIGMA2, out.data_ptr(), ws.data_ptr(), stream)
    kernel = C.ftd_column if op.startswith("ftd") else C.cosine_column
    return lambda: kernel(dt, *rows, *tg, out.data_ptr(), stats.data_ptr(), ws.data_ptr(), stream)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n1e{len(str(n)) - 1}")
@pytest.mark.parametrize("op", list(OPS))
def test_distance(benchmark, summary, op, n, device, impl):
    if impl in ("kernel_raw", "d2d_copy") and device != "cuda":
        pytest.skip("CUDA-only row")
    if impl == "kernel_raw" and not _ops.cuda_kernels_usable(0):
        pytest.skip("no compiled CUDA kernels in this build")
    k, kernel, reference = OPS[op]
    src, tgt = _inputs(k, n, device)
    bytes_read = (k + 1) * n * DTYPE.itemsize  # every source row and the target, once
    if impl == "kernel":
        call = lambda: kernel(src, tgt)  # noqa: E731
    elif impl == "reference":
        call = lambda: reference(src, tgt)  # noqa: E731
    elif impl == "kernel_raw":
        call = _raw_cuda(op, src, tgt)
    else:
        flat = torch.empty(bytes_read // DTYPE.itemsize, dtype=DTYPE, device=device)
        dst = torch.empty_like(flat)
        call = lambda: dst.copy_(flat)  # noqa: E731
    if impl in ("kernel", "reference"):  # the two must agree, or the comparison means nothing
        torch.testing.assert_close(
            kernel(src, tgt), reference(src, tgt).reshape(kernel(src, tgt).shape), rtol=RTOL, atol=1e-12
        )

    reps = REPS[device]

    def run():
        for _ in range(reps):
            call()
        if device == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up (allocator, lazy CUDA init)
    benchmark.group = f"{op}-n1e{len(str(n)) - 1}-{device}"
    benchmark.extra_info.update(reps=reps, bytes_read=bytes_read)
    benchmark.pedantic(run, rounds=5 if n >= 10**7 else 30, iterations=1, warmup_rounds=1)
    per_call = benchmark.stats.stats.median / reps
    summary.add(benchmark.group, impl, per_call, 2 * bytes_read if impl == "d2d_copy" else bytes_read)


# ----------------------------------------------------------------------------------------------------------------
# The memory floor: each kernel against a read-only reduction and a copy of the same bytes, interleaved.

FLOOR_N = 10**7
FLOOR_ROUNDS = 9


def _floor_ratios(kernel, floor, rounds: int) -> tuple[float, float]:
    """Median and worst of the per-round ratios kernel/floor, measured A B A B ... in one process."""
    import statistics
    import time

    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        kernel()
        t1 = time.perf_counter()
        floor()
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / (t2 - t1))
    return statistics.median(ratios), max(ratios)


# op -> (K, call(sources: list of K (n,) tensors, target)). The column reads K separate tensors in place.
FLOOR_OPS = {
    "ftd": (1, lambda s, t: fisherx.ftd(s[0], t)),
    "logdet": (1, lambda s, t: fisherx.distance(s[0], t, "logdet", sigma2=SIGMA2)),
    "cosine": (1, lambda s, t: fisherx.distance(s[0], t, "cosine")),
    "ftd_column_list_K4": (4, lambda s, t: fisherx.distance_column(s, t, "ftd")),
}


@pytest.mark.parametrize("floor", ["sum", "copy"])
@pytest.mark.parametrize("op", list(FLOOR_OPS))
def test_distance_vs_memory_floor(benchmark, summary, op, floor):
    """Kernel time / time of torch.sum (read-only) or Tensor.copy_ over the same (K + 1)·10^7 float32 (the K
    sources and the target), median and worst of per-round ratios; printed in the summary as "floor" groups."""
    k, call = FLOOR_OPS[op]
    src, tgt = _inputs(k, FLOOR_N, "cpu")
    rows = [r.clone() for r in src]  # K separate tensors, as K Fisher results are
    both = torch.cat([src.reshape(-1), tgt])
    dst = torch.empty_like(both)
    floor_call = (lambda: both.sum()) if floor == "sum" else (lambda: dst.copy_(both))  # noqa: E731
    kernel = lambda: call(rows, tgt)  # noqa: E731
    kernel(), floor_call()  # warm-up
    median, worst = benchmark.pedantic(lambda: _floor_ratios(kernel, floor_call, FLOOR_ROUNDS), rounds=1, iterations=1)
    benchmark.extra_info.update(median_ratio=median, worst_ratio=worst)
    print(f"\n{op} / {floor} at 10^7 float32: median {median:.2f}x, worst {worst:.2f}x over {FLOOR_ROUNDS} rounds")


def test_column_of_a_list_vs_stacking(benchmark):
    """distance_column over K = 4 separate 10^7 float32 Fishers, read in place through the address table, against
    stacking them first (what a list cost before) and against one (K, n) matrix; interleaved, per-round ratios."""
    import statistics
    import time

    src, tgt = _inputs(4, FLOOR_N, "cpu")
    rows = [r.clone() for r in src]
    calls = {
        "list": lambda: fisherx.distance_column(rows, tgt),
        "stack_then_column": lambda: fisherx.distance_column(torch.stack(rows), tgt),
        "matrix": lambda: fisherx.distance_column(src, tgt),
    }
    for call in calls.values():
        call()  # warm-up

    def rounds():
        ratios: dict[str, list[float]] = {"stack_then_column": [], "matrix": []}
        for _ in range(FLOOR_ROUNDS):
            times = {}
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                times[name] = time.perf_counter() - t0
            for name in ratios:
                ratios[name].append(times["list"] / times[name])
        return {name: (statistics.median(r), max(r)) for name, r in ratios.items()}

    result = benchmark.pedantic(rounds, rounds=1, iterations=1)
    for name, (median, worst) in result.items():
        benchmark.extra_info[f"list_over_{name}"] = median
        print(f"\nlist in place / {name}, K = 4 at 10^7 float32: median {median:.2f}x, worst {worst:.2f}x")
