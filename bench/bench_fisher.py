"""The Fisher engine on the GPU vs a plain forward+backward (pytest-benchmark; not part of the test run), and the
models and methods that bench/bench_bootstrap.py shares.

    pytest bench/bench_fisher.py --benchmark-only -m cuda                    # GPU: VGG-16, ResNet-18 (bench/gpu.sh)
    python bench/bench_fisher.py --model vgg11 --method fisherx              # one measurement, with peak memory

The CPU comparison is bench/bench_zoo.py (a model zoo, the methods interleaved A B A B in one process, median and
worst of the per-round ratios); this file's former CPU table timed each method in its own block of rounds, where
one noisy block could move a ratio 2x.

GPU (VGG-16 and ResNet-18 on 32×32 inputs, batch 128): time ratio vs plain and peak CUDA memory growth.
FISHERX_BENCH_THREADS=1 pins torch to one thread.
"""

from __future__ import annotations

import json
import os
import resource
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

BATCH = 256
GPU_BATCH = 128
if os.environ.get("FISHERX_BENCH_THREADS"):  # e.g. 1 on a shared, oversubscribed machine
    torch.set_num_threads(int(os.environ["FISHERX_BENCH_THREADS"]))


# ---- the benchmark models: an MLP, a small CNN and VGG-11 (the peers' comparison models) ------------------------
def mlp():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


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


MODELS = {
    "mlp": (mlp, (1, 28, 28)),
    "cnn": (cnn, (1, 28, 28)),
    "vgg11": (vgg11, (3, 32, 32)),
    "vgg16": (vgg16, (3, 32, 32)),
    "resnet18": (resnet18, (3, 32, 32)),
}


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
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        for o, p in zip(out, model.parameters(), strict=True):
            o += p.grad**2
    return out


def m_func(model, x, y, chunk=64):
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None], reduction="sum")

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    out = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(0, x.shape[0], chunk):
        gs = g(params, x[s : s + chunk], y[s : s + chunk])
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
    out = [(p.grad_sample**2).sum(0) for p in m.parameters()]
    m._close()
    model.eval()
    return out


METHODS = {
    "plain": m_plain,
    "fisherx": m_fisherx,
    "naive": m_naive,
    "torch.func": m_func,
    "backpack": m_backpack,
    "opacus": m_opacus,
}
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
    return {
        "model": name,
        "method": method,
        "seconds": dt,
        "samples_per_s": BATCH / dt,
        "rss_growth_mb": (rss1 - rss0) / 1024,
    }


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


# ---- pytest-benchmark (GPU) ------------------------------------------------------------------------------------
GPU_CASES = [
    pytest.param(
        n,
        m,
        id=f"{n}-{m}",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    )
    for n in ("vgg16", "resnet18")
    for m in ("plain", "fisherx")
]
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
