"""Cost of the in-pass bootstrap: fisher_diag(bootstrap=R) against a plain fisher_diag pass (pytest-benchmark).

    pytest bench/bench_bootstrap.py --benchmark-only -q -p no:cacheprovider     # CPU: the models of bench_fisher.py
    pytest bench/bench_bootstrap.py --benchmark-only -q -m cuda                  # GPU: VGG-16, ResNet-18

One batch of 256 (GPU: 128), cross-entropy, empirical Fisher, the models of bench/bench_fisher.py. Each case times
the whole public call; the summary prints R = 10 and R = 100 against R = 0 ("reference") of the same run, and
the ratios go to ``$FISHERX_BENCH_BOOT_TABLE`` (default build/bootstrap-bench.md) as a markdown table.
"""

from __future__ import annotations

import os

import pytest
import torch
from bench_fisher import BATCH, GPU_BATCH, _setup, _warm_up_custom_ops

import fisherx

REPLICATES = (0, 10, 100)
TABLE = os.environ.get("FISHERX_BENCH_BOOT_TABLE", "build/bootstrap-bench.md")
RESULTS: dict[tuple[str, str, int], float] = {}


def _fisher(model, x, y, r):
    return fisherx.fisher_diag(model, (x, y), progress=False, bootstrap=r, bootstrap_seed=0)


def _record(benchmark, summary, device, name, r, batch):
    sec = benchmark.stats.stats.median
    RESULTS[(device, name, r)] = sec
    base = RESULTS.get((device, name, 0))
    benchmark.extra_info["samples_per_s"] = batch / sec
    if base:
        benchmark.extra_info["time_vs_plain_fisher"] = sec / base
    summary.add(f"bootstrap {name} ({device}, batch {batch})", "reference" if r == 0 else f"R={r}", sec)
    lines = ["| device | model | R | time per batch | vs plain Fisher (R = 0) |", "|---|---|---|---|---|"]
    for (dev, n, rr), s in RESULTS.items():
        b = RESULTS.get((dev, n, 0))
        lines.append(f"| {dev} | {n} | {rr} | {s * 1e3:.0f} ms | {f'{s / b:.2f}x' if b else ''} |")
    os.makedirs(os.path.dirname(TABLE) or ".", exist_ok=True)
    with open(TABLE, "w") as f:
        f.write(f"threads: {torch.get_num_threads()}, torch {torch.__version__}\n\n" + "\n".join(lines) + "\n")


@pytest.mark.parametrize("r", REPLICATES, ids=lambda r: f"R{r}")
@pytest.mark.parametrize("name", ["mlp", "cnn", "vgg11"])
def test_cpu(benchmark, summary, name, r):
    model, x, y = _setup(name)
    _fisher(model, x[:8], y[:8], min(r, 2))  # warm-up: probe, custom-op set-up
    _warm_up_custom_ops()
    benchmark.group = f"bootstrap-cpu-{name}"
    benchmark.pedantic(
        _fisher,
        args=(model, x, y, r),
        rounds=3 if r < 100 or name != "vgg11" else 1,
        iterations=1,
        warmup_rounds=1 if r < 100 else 0,
    )
    _record(benchmark, summary, "cpu", name, r, BATCH)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("r", REPLICATES, ids=lambda r: f"R{r}")
@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_gpu(benchmark, summary, name, r):
    model, x, y = _setup(name, "cuda", GPU_BATCH)

    def run():
        _fisher(model, x, y, r)
        torch.cuda.synchronize()

    run()
    benchmark.group = f"bootstrap-gpu-{name}"
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    _record(benchmark, summary, "cuda", name, r, GPU_BATCH)
