"""Every model of the benchmark zoo (bench/bench_zoo.py, tests/fisher_models.ZOO at its "test" size) against the
naive per-sample loop in float64 (relative error ≤ 1e-10), so the fast paths the zoo times are the exact ones."""

from __future__ import annotations

import warnings

import pytest
import torch
from fisher_models import ZOO, naive_fisher

import fisherx

N = 5  # samples; odd on purpose


@pytest.mark.parametrize("name", list(ZOO))
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
