"""Every model of the benchmark zoo (bench/bench_zoo.py, tests/fisher_models.ZOO at its "test" size) against the
naive per-sample loop in float64 (relative error ≤ 1e-10), so the fast paths the zoo times are the exact ones."""
from __future__ import annotations

import warnings

import pytest
import torch
from fisher_models import ZOO, naive_fisher

import fisherx

N = 5  # samples; odd on purpose
# Models the engine cannot take yet (their layers' rules are being written on another branch): the failure is
# expected, and the test turns into an unexpected pass once they work.
PENDING = {
    "transformer": "nn.MultiheadAttention inside nn.TransformerEncoderLayer returns (out, None): the torch.func "
                   "fallback's vjp refuses a None output",
    "gru": "nn.GRU under the torch.func fallback: an in-place op on a broadcast hidden state fails under vmap",
    "lstm": "nn.LSTM under the torch.func fallback: as nn.GRU (it passes at some batch sizes, e.g. 32)",
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=PENDING[n], strict=False))
                                  if n in PENDING else n for n in ZOO])
def test_zoo_model_matches_naive_per_sample_loop(name):
    build, inputs = ZOO[name]["test"]
    torch.manual_seed(0)
    model = build().double().eval()
    x, y = inputs(N)
    x = x.double() if x.is_floating_point() else x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's one-time warning
        f = fisherx.fisher_diag(model, (x, y), progress=False)
    ref = naive_fisher(model, x, y)
    assert list(f) == list(ref)
    for pname, r in ref.items():
        scale = r.norm().item()
        assert scale > 0, f"{name} {pname}: the reference is zero, the model does not test it"
        err = (f[pname] - r).norm().item() / scale
        assert err <= 1e-10, f"{name} {pname}: relative error {err:.3g}"
