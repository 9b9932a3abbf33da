"""The Fisher engine vs plain forward+backward and the peers (pytest-benchmark; not part of the test run).

    pytest bench/bench_fisher.py --benchmark-only -p no:cacheprovider        # CPU: the three models below
    pytest bench/bench_fisher.py --benchmark-only -m cuda                    # GPU: VGG-16, ResNet-18 (bench/gpu.sh)
    python bench/bench_fisher.py --model vgg11 --method fisherx              # one measurement, with peak memory

CPU, batch 256, cross-entropy, empirical Fisher (Σ_i of squared per-sample gradients of the batch):
- ``plain``: one ordinary forward+backward of the batch (the floor: the same arithmetic as a fused pass);
- ``fisherx``: :func:`fisherx.fisher_diag` on the batch (the whole call: probe, hooks, rules);
- ``naive``: one backward per sample; ``torch.func``: vmap(grad) in chunks of 64;
- ``backpack`` (SumGradSquared) and ``opacus`` (grad_sample): only when importable, skipped otherwise.

``plain`` and ``fisherx`` (every method with FISHERX_BENCH_ALL=1) also run once in a fresh subprocess that reports
the peak-RSS growth over the warmed-up model (ru_maxrss before and after one call). The markdown table written to
``$FISHERX_BENCH_TABLE`` (default build/fisher-bench.md) lists samples/s, and time and memory growth as ratios
to ``plain`` from the same run (the machine is shared, so only ratios within one run mean anything).
FISHERX_BENCH_THREADS=1 pins torch to one thread (steadier on an oversubscribed machine).
GPU (VGG-16 and ResNet-18 on 32×32 inputs, batch 128): time ratio vs plain and peak CUDA memory growth.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

BATCH = 256
GPU_BATCH = 128
if os.environ.get("FISHERX_BENCH_THREADS"):  # e.g. 1 on a shared, oversubscribed machine
    torch.set_num_threads(int(os.environ["FISHERX_BENCH_THREADS"]))
TABLE = os.environ.get("FISHERX_BENCH_TABLE", "build/fisher-bench.md")  # the ratio table, rewritten after each test


# ---- the benchmark models: an MLP, a small CNN and VGG-11 (the peers' comparison models) ------------------------
def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(128, 10))


def _vgg(cfg, bn=False):
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1)] + ([nn.BatchNorm2d(v)] if bn else []) + [nn.ReLU(inplace=bn)]
            c = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))


def vgg11():  # VGG-11-like for 32x32x3, no BN
    return _vgg([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"])


def vgg16():  # CIFAR VGG-16 with BatchNorm (eval mode)
    return _vgg([64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"], bn=True)


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(h)) + self.short(x))


def resnet18():  # CIFAR ResNet-18 (3x3 stem, no max-pool)
    layers, c = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [_Basic(c, cout, stride), _Basic(cout, cout, 1)]
        c = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


MODELS = {"mlp": (mlp, (1, 28, 28)), "cnn": (cnn, (1, 28, 28)), "vgg11": (vgg11, (3, 32, 32)),
          "vgg16": (vgg16, (3, 32, 32)), "resnet18": (resnet18, (3, 32, 32))}


# ---- methods -----------------------------------------------------------------------------------------------------
def m_plain(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y, reduction="sum").backward()


def m_fisherx(model, x, y):
    import fisherx
    return fisherx.fisher_diag(model, (x, y), progress=False)


def m_naive(model, x, y):
    out = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(x.shape[0]):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        for o, p in zip(out, model.parameters()):
            o += p.grad ** 2
    return out


def m_func(model, x, y, chunk=64):
    from torch.func import functional_call, grad, vmap
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None], reduction="sum")

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    out = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(0, x.shape[0], chunk):
        gs = g(params, x[s:s + chunk], y[s:s + chunk])
        for k in out:
            out[k] += (gs[k] ** 2).sum(0)
    return out


def m_backpack(model, x, y):
    from backpack import backpack, extend
    from backpack.extensions import SumGradSquared
    m = extend(model)
    lf = extend(nn.CrossEntropyLoss(reduction="sum"))
    m.zero_grad()
    with backpack(SumGradSquared()):
        lf(m(x), y).backward()
    return [p.sum_grad_squared.clone() for p in m.parameters()]


def m_opacus(model, x, y):
    from opacus import GradSampleModule
    m = GradSampleModule(model.train(), loss_reduction="sum")
    m.zero_grad()
    F.cross_entropy(m(x), y, reduction="sum").backward()
    out = [(p.grad_sample ** 2).sum(0) for p in m.parameters()]
    m._close()
    model.eval()
    return out


METHODS = {"plain": m_plain, "fisherx": m_fisherx, "naive": m_naive, "torch.func": m_func,
           "backpack": m_backpack, "opacus": m_opacus}
NEEDS = {"backpack": "backpack", "opacus": "opacus"}
SLOW = {"naive", "torch.func", "backpack", "opacus"}  # one timed round (they take seconds to minutes)


def _setup(name, device="cpu", batch=BATCH):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().to(device).eval()
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, x, y


def _warm_up_custom_ops():
    # The first torch.library custom-op call of a process pays a one-time set-up (about a second here).
    from fisherx import _ops
    _ops.sqgrad_gemm(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 5))


def measure(name: str, method: str) -> dict:
    """One warmed-up call of ``method`` in this process: seconds, samples/s and peak-RSS growth (MB)."""
    model, x, y = _setup(name)
    fn = METHODS[method]
    fn(model, x[:8], y[:8])  # warm-up
    _warm_up_custom_ops()
    rss0 = _reset_peak_kb()
    t = time.perf_counter()
    fn(model, x, y)
    dt = time.perf_counter() - t
    rss1 = _peak_kb()
    return {"model": name, "method": method, "seconds": dt, "samples_per_s": BATCH / dt,
            "rss_growth_mb": (rss1 - rss0) / 1024}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_kb() -> int:
    """Reset the peak-RSS mark and return the current RSS (kB). ru_maxrss cannot serve: Linux carries it over
    exec from the parent, so a child of a big pytest process would report no growth."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_kb() -> int:
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _memory_in_subprocess(name: str, method: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--model", name, "--method", method], capture_output=True,
                         text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())))
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_growth_mb"]


# ---- pytest-benchmark ----------------------------------------------------------------------------------------------
RESULTS: dict[tuple[str, str], dict] = {}


def _available(method):
    mod = NEEDS.get(method)
    if mod is None:
        return True
    try:
        __import__(mod)
        return True
    except Exception:
        return False


CPU_CASES = [pytest.param(n, m, id=f"{n}-{m}", marks=[] if _available(m) else [pytest.mark.skip(
    reason=f"{NEEDS[m]} is not installed (pip install --no-deps backpack-for-pytorch opacus)")])
    for n in ("mlp", "cnn", "vgg11") for m in METHODS]


@pytest.mark.parametrize("name,method", CPU_CASES)
def test_cpu(benchmark, summary, name, method):
    if method in SLOW and name == "vgg11" and not os.environ.get("FISHERX_BENCH_ALL"):
        pytest.skip("minutes and up to 11 GB on VGG: set FISHERX_BENCH_ALL=1 (docs/benchmarks.md has the figures)")
    model, x, y = _setup(name)
    fn = METHODS[method]
    fn(model, x[:8], y[:8])
    _warm_up_custom_ops()
    rounds = 1 if method in SLOW else 5
    benchmark.group = f"fisher-cpu-{name}"
    benchmark.pedantic(fn, args=(model, x, y), rounds=rounds, iterations=1, warmup_rounds=0 if method in SLOW else 1)
    sec = benchmark.stats.stats.median
    mem = _memory_in_subprocess(name, method) if method in ("plain", "fisherx") or os.environ.get(
        "FISHERX_BENCH_ALL") else None
    RESULTS[(name, method)] = {"seconds": sec, "samples_per_s": BATCH / sec, "rss_growth_mb": mem}
    benchmark.extra_info.update(RESULTS[(name, method)])
    summary.add(f"fisher {name} (cpu, batch {BATCH})", "reference" if method == "plain" else method, sec)
    _write_table()


def _write_table():
    """The ratio table (time and peak-memory growth vs plain fwd+bwd of this run), as markdown, to TABLE."""
    lines = [f"threads: {torch.get_num_threads()}, batch {BATCH}, torch {torch.__version__}", "",
             "| model | method | samples/s | time vs plain | peak RSS growth (MB) | growth vs plain |",
             "|---|---|---|---|---|---|"]
    for (name, method), r in RESULTS.items():
        p = RESULTS.get((name, "plain"))
        ratio = f"{r['seconds'] / p['seconds']:.2f}x" if p else ""
        mem = f"{r['rss_growth_mb']:.0f}" if r["rss_growth_mb"] is not None else ""
        mratio = (f"{r['rss_growth_mb'] / max(p['rss_growth_mb'], 1.0):.2f}x"
                  if p and r["rss_growth_mb"] is not None and p["rss_growth_mb"] is not None else "")
        lines.append(f"| {name} | {method} | {r['samples_per_s']:.1f} | {ratio} | {mem} | {mratio} |")
    os.makedirs(os.path.dirname(TABLE) or ".", exist_ok=True)
    with open(TABLE, "w") as f:
        f.write("\n".join(lines) + "\n")


GPU_CASES = [pytest.param(n, m, id=f"{n}-{m}", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])
    for n in ("vgg16", "resnet18") for m in ("plain", "fisherx")]
GPU_RESULTS: dict[tuple[str, str], float] = {}


@pytest.mark.parametrize("name,method", GPU_CASES)
def test_gpu(benchmark, summary, name, method):
    model, x, y = _setup(name, "cuda", GPU_BATCH)
    fn = METHODS[method]

    def run():
        fn(model, x, y)
        torch.cuda.synchronize()

    run()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    benchmark.group = f"fisher-gpu-{name}"
    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=2)
    sec = benchmark.stats.stats.median
    GPU_RESULTS[(name, method)] = sec
    benchmark.extra_info["peak_mem_growth_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    benchmark.extra_info["samples_per_s"] = GPU_BATCH / sec
    if method == "fisherx" and (name, "plain") in GPU_RESULTS:
        benchmark.extra_info["time_vs_plain"] = sec / GPU_RESULTS[(name, "plain")]
    summary.add(f"fisher {name} (cuda, batch {GPU_BATCH})", "reference" if method == "plain" else method, sec)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn", choices=sorted(MODELS))
    ap.add_argument("--method", default="fisherx", choices=sorted(METHODS))
    a = ap.parse_args()
    print(json.dumps(measure(a.model, a.method)))
