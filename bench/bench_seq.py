"""Attention and recurrent layers: fisher_diag vs a plain forward+backward of the same batch (pytest-benchmark).

    pytest bench/bench_seq.py --benchmark-only -p no:cacheprovider     # every case, ratios in extra_info + a table
    python bench/bench_seq.py [--rounds 9] [--case lstm-32]             # the same, printed
    python bench/bench_seq.py --own-backward --rounds 9                  # LSTM/GRU: the rule's backward vs autograd's

Models (token inputs, Embedding(100, ·) in front, per-token cross-entropy over 10 classes, T = 32):
``transformer`` nn.TransformerEncoder of 2 layers (d=64, 4 heads, feed-forward 128, batch_first, eval);
``lstm`` / ``gru`` one layer, input 64, hidden 128. Batches 32 and 256, one thread (torch.set_num_threads(1)).

Each round times A = one plain forward+backward (loss.backward(), parameter gradients) and B = fisher_diag on the
same batch (the whole call: probe, hooks, rules), interleaved A B A B ...; the ratio B/A is taken per round and
the median and the worst round are reported (the machine is shared: only ratios within one round mean much).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fisherx

VOCAB, CLASSES, T = 100, 10, 32
ROUNDS = 7


class TokenModel(nn.Module):
    def __init__(self, body: nn.Module, d_in: int, d_out: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d_in)
        self.body = body
        self.head = nn.Linear(d_out, CLASSES)

    def forward(self, idx):
        h = self.body(self.emb(idx))
        h = h[0] if isinstance(h, tuple) else h
        return self.head(h).transpose(1, 2)


def transformer():
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    return TokenModel(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), 64, 64)


def lstm():
    return TokenModel(nn.LSTM(64, 128, batch_first=True), 64, 128)


def gru():
    return TokenModel(nn.GRU(64, 128, batch_first=True), 64, 128)


MODELS = {"transformer": transformer, "lstm": lstm, "gru": gru}
CASES = [f"{m}-{b}" for m in MODELS for b in (32, 256)]


def _setup(case: str):
    name, b = case.rsplit("-", 1)
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randint(0, VOCAB, (int(b), T))
    y = torch.randint(0, CLASSES, (int(b), T))
    return model, x, y


def _plain(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y, reduction="sum").backward()


def _fisher(model, x, y):
    return fisherx.fisher_diag(model, (x, y), progress=False)


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def measure(case: str, rounds: int = ROUNDS) -> dict:
    """Interleaved rounds of plain and fisher_diag on one batch: per-round ratios, their median and worst."""
    torch.set_num_threads(1)
    model, x, y = _setup(case)
    _plain(model, x, y)
    _fisher(model, x, y)  # warm-up (first-call costs, the warning-free path)
    plain, fish = [], []
    for _ in range(rounds):
        plain.append(_timed(_plain, model, x, y))
        fish.append(_timed(_fisher, model, x, y))
    ratios = [f / p for f, p in zip(fish, plain, strict=True)]
    return {
        "case": case,
        "plain_ms": 1e3 * statistics.median(plain),
        "fisher_ms": 1e3 * statistics.median(fish),
        "ratio_median": statistics.median(ratios),
        "ratio_worst": max(ratios),
    }


def _line(r: dict) -> str:
    return (
        f"{r['case']:<16} plain {r['plain_ms']:8.2f} ms  fisher {r['fisher_ms']:8.2f} ms  "
        f"ratio median {r['ratio_median']:.2f}x  worst {r['ratio_worst']:.2f}x"
    )


@contextlib.contextmanager
def _autograd_backward():
    """fisher_diag as before the recurrent rules' input_grads hook: autograd runs its backward through the fused
    kernel, the rule only adds the squares."""
    from fisherx.fisher.rules import recurrent

    hook = recurrent.recurrent.input_grads
    del recurrent.recurrent.input_grads
    try:
        yield
    finally:
        recurrent.recurrent.input_grads = hook


def _fisher_autograd(model, x, y):
    with _autograd_backward():
        return _fisher(model, x, y)


def measure_owned(case: str, rounds: int = ROUNDS) -> dict:
    """Interleaved rounds of plain, fisher_diag with autograd's backward through the recurrent kernel, and
    fisher_diag with the rule's own (the default): both ratios to plain per round, their median and worst."""
    torch.set_num_threads(1)
    model, x, y = _setup(case)
    for fn in (_plain, _fisher_autograd, _fisher):
        fn(model, x, y)
    times: dict = {fn: [] for fn in (_plain, _fisher_autograd, _fisher)}
    for _ in range(rounds):
        for fn in times:
            times[fn].append(_timed(fn, model, x, y))
    out = {"case": case}
    for key, fn in (("autograd", _fisher_autograd), ("owned", _fisher)):
        ratios = [f / p for f, p in zip(times[fn], times[_plain], strict=True)]
        out[f"{key}_median"], out[f"{key}_worst"] = statistics.median(ratios), max(ratios)
    return out


def _owned_line(r: dict) -> str:
    return (
        f"{r['case']:<16} vs plain: autograd backward {r['autograd_median']:.2f}x (worst {r['autograd_worst']:.2f}x)"
        f"  rule's own backward {r['owned_median']:.2f}x (worst {r['owned_worst']:.2f}x)"
    )


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("transformer")])
def test_recurrent_own_backward(benchmark, case):
    r = measure_owned(case)
    benchmark.extra_info.update(r)
    model, x, y = _setup(case)
    benchmark.pedantic(_fisher, args=(model, x, y), rounds=3, warmup_rounds=1)
    print("\n" + _owned_line(r))


@pytest.mark.parametrize("case", CASES)
def test_seq_ratio(benchmark, case):
    r = measure(case)
    benchmark.extra_info.update(r)
    model, x, y = _setup(case)
    benchmark.pedantic(_fisher, args=(model, x, y), rounds=3, warmup_rounds=1)
    print("\n" + _line(r))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--case", action="append", choices=CASES, help="default: every case")
    ap.add_argument("--own-backward", action="store_true", help="recurrent cases: the rule's backward vs autograd's")
    args = ap.parse_args()
    for c in args.case or CASES:
        if args.own_backward:
            if not c.startswith("transformer"):
                print(_owned_line(measure_owned(c, args.rounds)), flush=True)
        else:
            print(_line(measure(c, args.rounds)), flush=True)
