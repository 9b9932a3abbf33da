"""Cost of the in-pass bootstrap: fisher_diag(bootstrap=R) against a plain fisher_diag pass (pytest-benchmark).

    pytest bench/bench_bootstrap.py --benchmark-only -q -p no:cacheprovider     # CPU: the models of bench_fisher.py
    pytest bench/bench_bootstrap.py --benchmark-only -q -m cuda                  # GPU: VGG-16, ResNet-18

One batch of 256 (GPU: 128), cross-entropy, empirical Fisher, the models of bench/bench_fisher.py. Per model the
calls with R = 0, 10 and 100 run interleaved in one process (R0 R10 R100 R0 R10 R100 ...), and each ratio is the
median (and worst) of the per-round ratios to that round's R = 0 call, so that a noisy stretch of a shared machine
hits both sides of a ratio alike. The table goes to ``$FISHERX_BENCH_BOOT_TABLE`` (default build/bootstrap-bench.md);
pytest-benchmark times the R = 10 call.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
from bench_fisher import BATCH, GPU_BATCH, _setup, _warm_up_custom_ops

import fisherx

REPLICATES = (0, 10, 100)
ROUNDS = int(os.environ.get("FISHERX_BENCH_BOOT_ROUNDS", "3"))
TABLE = os.environ.get("FISHERX_BENCH_BOOT_TABLE", "build/bootstrap-bench.md")
ROWS: list[str] = []


def _fisher(model, x, y, r, sync=False):
    fisherx.fisher_diag(model, (x, y), progress=False, bootstrap=r, bootstrap_seed=0)
    if sync:
        torch.cuda.synchronize()


def interleaved(model, x, y, rounds: int, sync: bool = False) -> dict[int, list[float]]:
    """Seconds per round of each R in REPLICATES, run in turn within every round, after one warm-up call each."""
    for r in REPLICATES:
        _fisher(model, x, y, r, sync)
    times: dict[int, list[float]] = {r: [] for r in REPLICATES}
    for _ in range(rounds):
        for r in REPLICATES:
            t = time.perf_counter()
            _fisher(model, x, y, r, sync)
            times[r].append(time.perf_counter() - t)
    return times


def _report(benchmark, summary, device: str, name: str, batch: int, times: dict[int, list[float]]) -> None:
    cells = []
    for r in REPLICATES:
        ratios = [a / b for a, b in zip(times[r], times[0], strict=True)]
        med = statistics.median(times[r])
        summary.add(f"bootstrap {name} ({device}, batch {batch})", "reference" if r == 0 else f"R={r}", med)
        cells.append(f"{med * 1e3:.0f} ms" if r == 0 else f"{statistics.median(ratios):.2f}x ({max(ratios):.2f}x)")
        if r:
            benchmark.extra_info[f"R{r}_vs_R0"] = statistics.median(ratios)
    ROWS.append(f"| {device} | {name} | " + " | ".join(cells) + " |")
    _write()


def _write() -> None:
    head = [
        "| device | model | R = 0 | R = 10 vs R = 0 (worst) | R = 100 vs R = 0 (worst) |",
        "|---|---|---:|---:|---:|",
    ]
    os.makedirs(os.path.dirname(TABLE) or ".", exist_ok=True)
    with open(TABLE, "w") as f:
        f.write(
            f"threads: {torch.get_num_threads()}, torch {torch.__version__}, {ROUNDS} interleaved rounds\n\n"
            + "\n".join(head + ROWS)
            + "\n"
        )


@pytest.mark.parametrize("name", ["mlp", "cnn", "vgg11"])
def test_cpu(benchmark, summary, name):
    model, x, y = _setup(name)
    _fisher(model, x[:8], y[:8], 2)  # warm-up: probe, custom-op set-up
    _warm_up_custom_ops()
    times = interleaved(model, x, y, ROUNDS)
    benchmark.group = f"bootstrap-cpu-{name}"
    benchmark.pedantic(_fisher, args=(model, x, y, 10), rounds=1, iterations=1, warmup_rounds=0)
    _report(benchmark, summary, "cpu", name, BATCH, times)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_gpu(benchmark, summary, name):
    model, x, y = _setup(name, "cuda", GPU_BATCH)
    times = interleaved(model, x, y, 5, sync=True)
    benchmark.group = f"bootstrap-gpu-{name}"
    benchmark.pedantic(_fisher, args=(model, x, y, 10, True), rounds=1, iterations=1, warmup_rounds=0)
    _report(benchmark, summary, "cuda", name, GPU_BATCH, times)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_cpu_weighted_kernel(benchmark, summary, dtype):
    """The squared-GEMM kernel with R = 16 Poisson weights against the same call unweighted, interleaved: the
    weighted accumulation's own cost (one sequence GEMM: 64 samples, 32 positions, 256 × 128)."""
    from fisherx import _ops

    gen = torch.Generator().manual_seed(0)
    g = torch.randn(64, 1, 32, 256, generator=gen, dtype=dtype)
    u = torch.randn(64, 1, 32, 128, generator=gen, dtype=dtype)
    w = torch.poisson(torch.ones(16, 64, dtype=dtype), generator=gen)
    ratios, weighted = [], []
    for i in range(10):  # round 0 warms up
        t = time.perf_counter()
        _ops.sqgrad_gemm(g, u, None)
        t1 = time.perf_counter()
        _ops.sqgrad_gemm(g, u, w)
        t2 = time.perf_counter()
        if i:
            ratios.append((t2 - t1) / (t1 - t))
            weighted.append(t2 - t1)
    benchmark.group = "bootstrap-cpu-kernel"
    benchmark.extra_info["weighted_vs_unweighted"] = statistics.median(ratios)
    benchmark.pedantic(_ops.sqgrad_gemm, args=(g, u, w), rounds=3, iterations=1, warmup_rounds=1)
    summary.add(f"bootstrap kernel R=16 ({str(dtype)[6:]})", "R=16", statistics.median(weighted))
    ROWS.append(
        f"| cpu | sqgrad_gemm kernel, {str(dtype)[6:]} | (R = 16) | "
        f"{statistics.median(ratios):.2f}x ({max(ratios):.2f}x) vs unweighted | |"
    )
    _write()
