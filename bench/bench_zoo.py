"""The Fisher engine on a model zoo, against a plain forward+backward of the same batch (pytest-benchmark).

    pytest bench/bench_zoo.py --benchmark-only -p no:cacheprovider          # the whole zoo, batch 32 and 256
    python bench/bench_zoo.py [--models mlp,cnn] [--batches 32,256] [--rounds 7] [--memory] [--peers]

One thread (torch.set_num_threads(1)), cross-entropy, empirical Fisher. Per (model, batch) the methods run
interleaved in one process, A B A B ... (plain, fisherx, plain, fisherx, ...), so a noisy stretch of the shared
machine hits both alike; the table quotes the median and the worst of the per-round ratios fisherx/plain.

- ``plain``: one ordinary forward+backward of the batch (loss summed): the floor.
- ``fisherx``: :func:`fisherx.fisher_diag` on the batch (the whole call: plan look-up, hooks, rules).
- peers, beside it (``--peers``, or FISHERX_ZOO_PEERS=1 under pytest): ``opacus`` (GradSampleModule, Σ of squared
  per-sample gradients), ``backpack`` (SumGradSquared) and ``torch.func`` (vmap(grad), chunks of 32), each where
  it runs and where its per-sample gradients fit in :data:`PEER_BUDGET` elements; the best one is listed.
- memory (``--memory``, FISHERX_ZOO_MEMORY=1): peak-RSS growth of one call over the warmed-up model, each method in
  a fresh subprocess, as a ratio to plain's growth.

The markdown table goes to ``$FISHERX_ZOO_TABLE`` (default build/zoo-bench.md). The zoo's models are those of
tests/fisher_models.py (``ZOO``, "bench" size); tests/fisher/test_fisher_zoo.py checks each against the naive
per-sample loop.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from fisher_models import ZOO  # noqa: E402

torch.set_num_threads(1)
BATCHES = (32, 256)
ROUNDS = int(os.environ.get("FISHERX_ZOO_ROUNDS", "7"))
PEER_BUDGET = 1 << 28  # per-sample gradient elements a peer may hold (1 GiB in float32)
TABLE = os.environ.get("FISHERX_ZOO_TABLE", "build/zoo-bench.md")
TARGET = {32: 1.5, 256: 1.3}  # time vs plain; memory growth ≤ 2x plain


def setup(name: str, batch: int):
    build, inputs = ZOO[name]["bench"]
    torch.manual_seed(0)
    model = build().eval()
    x, y = inputs(batch)
    return model, x, y


def _ce(out, y):
    return F.cross_entropy(out, y, reduction="sum")


def m_plain(model, x, y):
    model.zero_grad(set_to_none=True)
    _ce(model(x), y).backward()


def m_fisherx(model, x, y):
    import fisherx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's one-time warning
        return fisherx.fisher_diag(model, (x, y), progress=False)


def m_opacus(model, x, y):
    from opacus import GradSampleModule

    m = GradSampleModule(model, loss_reduction="sum")
    try:
        m.zero_grad(set_to_none=True)
        _ce(m(x), y).backward()
        return [(p.grad_sample**2).sum(0) for p in model.parameters()]
    finally:
        m._close()


def m_backpack(model, x, y):
    from backpack import backpack, extend
    from backpack.extensions import SumGradSquared

    m = extend(model)
    m.zero_grad(set_to_none=True)
    with backpack(SumGradSquared()):
        _ce(m(x), y).backward()
    return [p.sum_grad_squared for p in m.parameters()]


def m_func(model, x, y, chunk=32):
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return _ce(functional_call(model, p, (xi[None],)), yi[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    out = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(0, x.shape[0], chunk):
        for k, v in g(params, x[s : s + chunk], y[s : s + chunk]).items():
            out[k] += v.square().sum(0)
    return out


METHODS = {"plain": m_plain, "fisherx": m_fisherx, "opacus": m_opacus, "backpack": m_backpack, "torch.func": m_func}
PEERS = ("opacus", "backpack", "torch.func")


def _peer_fits(method: str, model, batch: int) -> bool:
    n = sum(p.numel() for p in model.parameters())
    per = n * (32 if method == "torch.func" else batch)
    return per <= PEER_BUDGET


def interleaved(model, x, y, methods, rounds: int) -> dict[str, list[float]]:
    """Seconds per round of each method, run A B A B ... after one warm-up call each (same process, same batch)."""
    for m in methods:
        METHODS[m](model, x, y)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            t = time.perf_counter()
            METHODS[m](model, x, y)
            times[m].append(time.perf_counter() - t)
    return times


def ratios(times: dict[str, list[float]], method: str) -> tuple[float, float]:
    """(median, worst) of the per-round ratios method/plain."""
    r = [a / b for a, b in zip(times[method], times["plain"], strict=True)]
    return statistics.median(r), max(r)


# ---- memory: one call in a fresh process ---------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_growth_mb(name: str, batch: int, method: str) -> float:
    """Peak-RSS growth (MB) of one warmed-up call of ``method``, measured in a fresh subprocess."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, str(batch), method],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]


def _child(name: str, batch: int, method: str) -> None:
    model, x, y = setup(name, batch)
    METHODS[method](model, x[:2], y[:2])  # warm-up on a tiny batch: lazy set-ups, the custom ops' registration
    if method == "plain":
        model.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak mark (VmHWM) to the current RSS
        f.write("5")
    rss0 = _status_kb("VmRSS")
    METHODS[method](model, x, y)
    print(json.dumps({"growth_mb": (_status_kb("VmHWM") - rss0) / 1024}))


# ---- one (model, batch) row ------------------------------------------------------------------------------------------
def measure(name: str, batch: int, rounds: int = ROUNDS, memory: bool = False, peers: bool = False) -> dict:
    model, x, y = setup(name, batch)
    row: dict = {"model": name, "batch": batch, "params": sum(p.numel() for p in model.parameters())}
    try:
        times = interleaved(model, x, y, ["plain", "fisherx"], rounds)
    except Exception as e:  # a model the engine cannot take yet: say so in the table
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"
        return row
    row["plain_s"] = statistics.median(times["plain"])
    row["fisherx_s"] = statistics.median(times["fisherx"])
    row["ratio"], row["worst"] = ratios(times, "fisherx")
    if peers:
        best = None
        for p in PEERS:
            if not _peer_fits(p, model, batch):
                row[p] = "too big"
                continue
            try:
                m2, x2, y2 = setup(name, batch)
                t = interleaved(m2, x2, y2, ["plain", p], max(1, rounds // 3))
                r = ratios(t, p)[0]
                row[p] = f"{r:.2f}x"
                if best is None or r < best[1]:
                    best = (p, r)
            except Exception as e:
                row[p] = f"fails ({type(e).__name__})"
        fits = any(row[p] != "too big" for p in PEERS)
        row["best_peer"] = f"{best[0]} {best[1]:.1f}x" if best else "none runs" if fits else "none fits in 1 GiB"
    if memory:
        plain = memory_growth_mb(name, batch, "plain")
        fx = memory_growth_mb(name, batch, "fisherx")
        row["mem_plain_mb"], row["mem_fisherx_mb"] = plain, fx
        row["mem_ratio"] = fx / max(plain, 1.0)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, median (worst) of per-round ratios to a "
        "plain forward+backward, interleaved",
        "",
        "| model | batch | plain | fisherx | time vs plain (worst) | target | memory growth vs plain | best peer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | | | fails: {r['error']} | | | |")
            continue
        ok = "met" if r["ratio"] <= TARGET[min(TARGET, key=lambda b: abs(b - r["batch"]))] else "missed"
        mem = (
            f"{r['mem_ratio']:.2f}x ({r['mem_fisherx_mb']:.0f} / {r['mem_plain_mb']:.0f} MB)"
            if "mem_ratio" in r
            else ""
        )
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['plain_s'] * 1e3:.1f} ms | {r['fisherx_s'] * 1e3:.1f} ms | "
            f"{r['ratio']:.2f}x ({r['worst']:.2f}x) | {ok} | {mem} | {r.get('best_peer', '')} |"
        )
    return "\n".join(lines) + "\n"


def _write(rows):
    os.makedirs(os.path.dirname(TABLE) or ".", exist_ok=True)
    tmp = TABLE + ".tmp"
    with open(tmp, "w") as f:
        f.write(table(rows))
    os.replace(tmp, TABLE)


# ---- pytest-benchmark ------------------------------------------------------------------------------------------------
ROWS: list[dict] = []


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo(benchmark, summary, name, batch):
    row = measure(
        name, batch, memory=bool(os.environ.get("FISHERX_ZOO_MEMORY")), peers=bool(os.environ.get("FISHERX_ZOO_PEERS"))
    )
    ROWS.append(row)
    _write(ROWS)
    if "error" in row:
        pytest.xfail(row["error"])
    model, x, y = setup(name, batch)
    benchmark.group = f"zoo-{name}-{batch}"
    benchmark.extra_info.update({k: v for k, v in row.items() if isinstance(v, (int, float, str))})
    benchmark.pedantic(m_fisherx, args=(model, x, y), rounds=1, iterations=1, warmup_rounds=1)
    summary.add(f"zoo {name} (batch {batch})", "reference", row["plain_s"])
    summary.add(f"zoo {name} (batch {batch})", "fisherx", row["fisherx_s"])


if __name__ == "__main__":
    import argparse

    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--batches", default="32,256")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--peers", action="store_true")
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        for b in (int(s) for s in a.batches.split(",")):
            rows.append(measure(name, b, a.rounds, a.memory, a.peers))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            _write(rows)
    print(table(rows))
