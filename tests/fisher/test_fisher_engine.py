"""fisher_diag against a naive per-sample loop (one backward per sample, float64) on every layer rule and on whole
models: one table of cases, one test. Relative error ≤ 1e-10 in float64 and ≤ 1e-4 in float32."""

from __future__ import annotations

import copy
import warnings
import zlib

import pytest
import torch
import torch.nn.functional as F
from fisher_models import (
    Attention,
    BroadcastParams,
    FunctionalUse,
    Residual,
    SharedCalls,
    SharedLayers,
    TiedLM,
    TransformerBlock,
    TwiceApplied,
    WithUnknown,
    naive_fisher,
)
from torch import nn

import fisherx
from fisherx.fisher.rules import fallback as fallback_mod

B = 7  # odd on purpose


def _img(c, *s):
    return lambda dt: (torch.randn(B, c, *s, dtype=dt), torch.randint(0, 4, (B,)))


def _vec(d, classes=4):
    return lambda dt: (torch.randn(B, d, dtype=dt), torch.randint(0, classes, (B,)))


def _tokens(vocab, t, classes):
    # A small vocabulary so tokens repeat inside a sample (their rows must add up before squaring).
    return lambda dt: (torch.randint(0, vocab, (B, t)), torch.randint(0, classes, (B, t)))


def _frozen_mlp():
    m = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4))
    m[0].weight.requires_grad_(False)
    return m


def _randomize_norms(m):
    # Non-trivial running statistics and affine parameters, so the BatchNorm rule is really exercised.
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
        if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and mod.weight is not None:
            with torch.no_grad():
                mod.weight.normal_()
                mod.bias.normal_()
    return m


# id, model builder, input builder (dtype -> (x, y)), loss
CASES = [
    ("mlp", lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)), _vec(5), "cross_entropy"),
    ("linear-frozen-weight", _frozen_mlp, _vec(5), "cross_entropy"),
    (
        "linear-seq",
        lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Flatten(), nn.Linear(15, 4)),
        lambda dt: (torch.randn(B, 3, 6, dtype=dt), torch.randint(0, 4, (B,))),
        "cross_entropy",
    ),
    (
        "linear-4d",
        lambda: nn.Sequential(nn.Linear(3, 5), nn.Flatten(), nn.Linear(40, 4)),
        lambda dt: (torch.randn(B, 2, 4, 3, dtype=dt), torch.randint(0, 4, (B,))),
        "cross_entropy",
    ),
    (
        "conv1d-stride-pad",
        lambda: nn.Sequential(nn.Conv1d(3, 4, 3, stride=2, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 4)),
        _img(3, 9),
        "cross_entropy",
    ),
    (
        "conv1d-same-dil-groups",
        lambda: nn.Sequential(
            nn.Conv1d(4, 6, 3, padding="same", dilation=2, groups=2), nn.Flatten(), nn.Linear(6 * 9, 4)
        ),
        _img(4, 9),
        "cross_entropy",
    ),
    (
        "conv2d-same-dil-reflect",
        lambda: nn.Sequential(
            nn.Conv2d(3, 6, (3, 2), padding="same", dilation=(2, 1), groups=3, padding_mode="reflect"),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 7 * 5, 4),
        ),
        _img(3, 7, 5),
        "cross_entropy",
    ),
    (
        "conv2d-stride-circular",
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, stride=(2, 1), padding=1, padding_mode="circular", bias=False),
            nn.Tanh(),
            nn.Conv2d(4, 3, 2, stride=2, dilation=1),
            nn.Flatten(),
            nn.LazyLinear(4),
        ),
        _img(2, 9, 6),
        "cross_entropy",
    ),
    (
        "conv3d-groups",
        lambda: nn.Sequential(
            nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(1, 1, 2), groups=2),
            nn.Flatten(),
            nn.LazyLinear(4),
        ),
        _img(2, 4, 5, 5),
        "cross_entropy",
    ),
    (
        "cnn-batchnorm-eval",
        lambda: _randomize_norms(
            nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1),
                nn.BatchNorm2d(4),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Conv2d(4, 6, 3, padding=1),
                nn.BatchNorm2d(6),
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(6, 4),
            )
        ),
        _img(1, 8, 8),
        "cross_entropy",
    ),
    (
        "batchnorm1d",
        lambda: _randomize_norms(
            nn.Sequential(
                nn.Linear(5, 6),
                nn.BatchNorm1d(6),
                nn.ReLU(),
                nn.Unflatten(1, (2, 3)),
                nn.BatchNorm1d(2),
                nn.Flatten(),
                nn.Linear(6, 4),
            )
        ),
        _vec(5),
        "cross_entropy",
    ),
    (
        "batchnorm3d",
        lambda: _randomize_norms(nn.Sequential(nn.Conv3d(1, 3, 2), nn.BatchNorm3d(3), nn.Flatten(), nn.LazyLinear(4))),
        _img(1, 3, 3, 3),
        "cross_entropy",
    ),
    (
        "groupnorm-layernorm",
        lambda: _randomize_norms(
            nn.Sequential(
                nn.Conv2d(2, 6, 3),
                nn.GroupNorm(3, 6),
                nn.ReLU(),
                nn.LayerNorm([6, 3, 3]),
                nn.Flatten(),
                nn.Linear(54, 4),
            )
        ),
        _img(2, 5, 5),
        "cross_entropy",
    ),
    ("residual-block", lambda: _randomize_norms(Residual()), _img(3, 6, 6), "cross_entropy"),
    ("transformer-block", lambda: _randomize_norms(TransformerBlock()), _tokens(11, 5, 3), "cross_entropy"),
    (
        "embedding-freq",
        lambda: nn.Sequential(nn.Embedding(5, 3, scale_grad_by_freq=True), nn.Flatten(), nn.Linear(12, 4)),
        lambda dt: (torch.randint(0, 5, (B, 4)), torch.randint(0, 4, (B,))),
        "cross_entropy",
    ),
    ("tied-weights", TiedLM, _tokens(7, 6, 7), "cross_entropy"),
    ("module-called-twice", TwiceApplied, _vec(6, 3), "cross_entropy"),
    ("linear-applied-4x", lambda: SharedLayers("lin", 4), _vec(6, 7), "cross_entropy"),
    (
        "linear-seq-applied-3x",
        lambda: SharedLayers("lin", 3),
        lambda dt: (torch.randn(B, 4, 6, dtype=dt), torch.randint(0, 7, (B,))),
        "cross_entropy",
    ),
    ("conv-applied-twice", lambda: SharedLayers("conv"), _img(3, 5, 4), "cross_entropy"),
    (
        "embedding-twice-tied-padding",
        lambda: SharedLayers("emb"),
        lambda dt: (torch.randint(0, 7, (B, 5)), torch.randint(0, 7, (B,))),
        "cross_entropy",
    ),
    (
        "embedding-twice-tied-freq",
        lambda: SharedLayers("emb-freq"),
        lambda dt: (torch.randint(0, 7, (B, 5)), torch.randint(0, 7, (B,))),
        "cross_entropy",
    ),
    ("functional-use", FunctionalUse, _tokens(6, 4, 6), "cross_entropy"),
    (
        "broadcast-params",
        BroadcastParams,
        lambda dt: (torch.randn(B, 3, 4, dtype=dt), torch.randint(0, 3, (B,))),
        "cross_entropy",
    ),
    (
        "shared-calls",
        SharedCalls,
        lambda dt: (torch.randn(B, 3, 4, dtype=dt), torch.randint(0, 3, (B,))),
        "cross_entropy",
    ),
    ("unknown-module-fallback", WithUnknown, _vec(4, 3), "cross_entropy"),
    (
        "multihead-attention-fallback",
        Attention,
        lambda dt: (torch.randint(0, 9, (B, 4)), torch.randint(0, 3, (B,))),
        "cross_entropy",
    ),
    (
        "mse-conv",
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 2, 1)),
        lambda dt: (torch.randn(B, 2, 5, 5, dtype=dt), torch.randn(B, 2, 5, 5, dtype=dt)),
        "mse",
    ),
]
if hasattr(nn, "RMSNorm"):
    CASES.append(
        ("rmsnorm", lambda: nn.Sequential(nn.Linear(5, 6), nn.RMSNorm(6), nn.Linear(6, 4)), _vec(5), "cross_entropy")
    )


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_naive_per_sample_loop(case, dtype, device, monkeypatch):
    name, build, inputs, loss = case
    torch.manual_seed(zlib.crc32(name.encode()))
    if device == "cuda":  # TF32 convolutions would be torch's own 1e-3 error, not the engine's
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    x, y = inputs(dtype)
    model = build().to(dtype).eval()
    model(x[:1])  # materialise lazy layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's one-time warning is tested on its own
        if device == "cpu":
            f = fisherx.fisher_diag(model, (x, y), loss=loss, progress=False)
        else:  # the model on the GPU (the batches follow it); the naive reference stays on the CPU
            f = fisherx.fisher_diag(copy.deepcopy(model).to(device), (x, y), loss=loss, progress=False)
    ref = naive_fisher(model, x, y, loss)
    assert list(f) == list(ref), "parameters covered, in model order"
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for pname, r in ref.items():
        got = f[pname].cpu()
        assert got.shape == r.shape and got.dtype == dtype
        scale = r.norm().item()
        assert scale > 0, f"{pname}: the reference is zero, the case does not test it"
        err = (got.double() - r).norm().item() / scale
        assert err <= tol, f"{name} {pname}: relative error {err:.3g} > {tol}"
    assert f.n_samples == B


def test_fallback_warns_once_naming_the_module_type():
    fallback_mod._warned.clear()
    x, y = torch.randn(4, 4), torch.randint(0, 3, (4,))
    with pytest.warns(RuntimeWarning, match="Bilinear2"):
        fisherx.fisher_diag(WithUnknown(), (x, y), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second run must not warn again
        fisherx.fisher_diag(WithUnknown(), (x, y), progress=False)


def test_params_selection_and_frozen_parameters():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    full = fisherx.fisher_diag(m, (x, y), progress=False)
    part = fisherx.fisher_diag(m, (x, y), params=["2.weight", "0.bias"], progress=False)
    assert list(part) == ["0.bias", "2.weight"]
    for k in part:
        torch.testing.assert_close(part[k], full[k])
    pred = fisherx.fisher_diag(m, (x, y), params=lambda n: n.startswith("2."), progress=False)
    assert list(pred) == ["2.weight", "2.bias"]
    m[0].bias.requires_grad_(False)
    assert "0.bias" not in fisherx.fisher_diag(m, (x, y), progress=False)
    with pytest.raises(ValueError, match="nope"):
        fisherx.fisher_diag(m, (x, y), params=["nope"], progress=False)


def test_batches_max_samples_and_dataloader_agree():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(27, 4)).eval()
    x, y = torch.randn(10, 1, 5, 5), torch.randint(0, 4, (10,))
    whole = fisherx.fisher_diag(m, (x, y), progress=False)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    streamed = fisherx.fisher_diag(m, dl, progress=False)
    for k in whole:
        torch.testing.assert_close(streamed[k], whole[k])
    first6 = fisherx.fisher_diag(m, dl, max_samples=6, progress=False)
    assert first6.n_samples == 6
    for k, r in naive_fisher(m, x[:6], y[:6]).items():
        torch.testing.assert_close(first6[k].double(), r, rtol=1e-4, atol=1e-7)
    # merge of two halves = the whole, weighted by sample count
    a = fisherx.fisher_diag(m, (x[:4], y[:4]), progress=False)
    b = fisherx.fisher_diag(m, (x[4:], y[4:]), progress=False)
    merged = a.merge(b)
    assert merged.n_samples == 10
    for k in whole:
        torch.testing.assert_close(merged[k], whole[k])


def test_batchnorm_in_training_mode_is_switched_to_eval_with_a_warning():
    # Decision: per-sample gradients need independent samples, so the Fisher is taken in eval mode (running
    # statistics). A model left in training mode is switched with a warning and its flags are restored after.
    torch.manual_seed(2)
    m = _randomize_norms(nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(27, 4)))
    m.train()
    x, y = torch.randn(5, 1, 5, 5), torch.randint(0, 4, (5,))
    stats = m[1].running_mean.clone()
    with pytest.warns(RuntimeWarning, match="eval mode"):
        f = fisherx.fisher_diag(m, (x, y), progress=False)
    assert m.training and m[1].training, "training flags restored"
    assert torch.equal(m[1].running_mean, stats), "running statistics untouched"
    ref = naive_fisher(m, x, y)  # naive_fisher uses eval mode
    for k, r in ref.items():
        torch.testing.assert_close(f[k].double(), r, rtol=1e-4, atol=1e-8)
    m2 = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.Flatten(), nn.Linear(27, 4))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fisherx.fisher_diag(m2, (x, y), progress=False)


CONV_PATHS = {  # (THIN_M, THIN_K, compiled kernels): which of the conv rule's three paths every layer takes
    "fused-kernel": (0, 0, True),
    "folded-groups": (1 << 30, 0, True),  # torch's weight-gradient convolution with the batch in the groups
    "unfold": (0, 0, False),  # devices without compiled kernels
}


@pytest.mark.parametrize("path", list(CONV_PATHS))
@pytest.mark.parametrize("case", [c for c in CASES if "conv" in c[0] or c[0].startswith("cnn")], ids=lambda c: c[0])
def test_conv_rule_paths(case, path, monkeypatch):
    from fisherx.fisher.rules import conv

    thin_m, thin_k, compiled = CONV_PATHS[path]
    monkeypatch.setattr(conv, "THIN_M", thin_m)
    monkeypatch.setattr(conv, "THIN_K", thin_k)
    monkeypatch.setattr(conv, "compiled_kernels", lambda t: compiled)
    name, build, inputs, loss = case
    torch.manual_seed(5)
    x, y = inputs(torch.float64)
    model = build().double().eval()
    model(x[:1])
    f = fisherx.fisher_diag(model, (x, y), loss=loss, progress=False)
    for pname, r in naive_fisher(model, x, y, loss).items():
        assert (f[pname] - r).norm() <= 1e-10 * r.norm(), pname


TIED = [
    "tied-weights",
    "module-called-twice",
    "linear-applied-4x",
    "linear-seq-applied-3x",
    "conv-applied-twice",
    "embedding-twice-tied-padding",
    "embedding-twice-tied-freq",
]


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in TIED], ids=lambda c: c[0])
def test_tied_uses_take_the_closed_form(case, monkeypatch):
    # Tied weights of Linear, Conv and Embedding layers never materialise per-sample gradients.
    from fisherx.fisher import engine

    def forbidden(*a, **k):
        raise AssertionError("per-sample gradients materialised for a tied weight")

    monkeypatch.setattr(engine, "per_sample_grads", forbidden)
    name, build, inputs, loss = case
    torch.manual_seed(3)
    x, y = inputs(torch.float64)
    model = build().double().eval()
    f = fisherx.fisher_diag(model, (x, y), loss=loss, progress=False)
    assert f.n_samples == B
    assert engine._PLANS[model][1].tied, "the case has a tied parameter"


def test_broadcast_parameters_take_the_tap_route():
    # Class tokens, position tables and layer scales used elementwise in a forward get per-sample gradients from a
    # tap on their expansion; a parameter also used in a matmul stays on the whole-model route.
    from fisherx.fisher import engine

    model = BroadcastParams().double().eval()
    x, y = torch.randn(B, 3, 4, dtype=torch.float64), torch.randint(0, 3, (B,))
    fisherx.fisher_diag(model, (x, y), progress=False)
    plan = engine._PLANS[model][1]
    assert plan.broadcast == ["cls", "pos", "pos2", "scale"]
    assert "mixed" in plan.external + list(plan.fallback.get("", {}).values())


def test_shared_calls_take_the_tap_route():
    # Position-wise layers run once on an input the samples share (position ids, a fixed grid, a buffer), whose
    # outputs are only broadcast over the batch, use their rules on the tapped per-sample gradients; one whose
    # output also meets a matmul stays on the whole-model route.
    from fisherx.fisher import engine

    model = SharedCalls().double().eval()
    x, y = torch.randn(B, 3, 4, dtype=torch.float64), torch.randint(0, 3, (B,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mixed's (one-time) whole-model warning
        fisherx.fisher_diag(model, (x, y), progress=False)
    plan = engine._PLANS[model][1]
    shared = sorted(full for names in plan.shared.values() for full in names.values())
    assert shared == ["grid.bias", "grid.weight", "norm.bias", "norm.weight", "pos.weight", "wpe.weight"]
    assert sorted(plan.external) == ["mixed.bias", "mixed.weight"]


@pytest.mark.parametrize("cls", [BroadcastParams, SharedCalls], ids=["broadcast-params", "shared-calls"])
def test_several_label_draws_reach_the_tap_routes(cls, monkeypatch):
    # kind="mc" runs one backward per label draw over the same forward: every draw's rows from the broadcast taps
    # must be used (the same Fisher as with those parameters on the whole-model route, same draws).
    from fisherx.fisher import engine

    torch.manual_seed(0)
    model = cls().double().eval()
    x, y = torch.randn(B, 3, 4, dtype=torch.float64), torch.randint(0, 3, (B,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        torch.manual_seed(1)
        taps = fisherx.fisher_diag(model, (x, y), kind="mc", mc_samples=3, progress=False)
        monkeypatch.setattr(engine, "_broadcast_use", lambda *a, **k: False)  # no tap route: whole-model path
        other = copy.deepcopy(model)  # a new plan
        torch.manual_seed(1)
        whole = fisherx.fisher_diag(other, (x, y), kind="mc", mc_samples=3, progress=False)
    assert not engine._PLANS[other][1].broadcast and not engine._PLANS[other][1].shared
    for n in whole:
        torch.testing.assert_close(taps[n], whole[n], rtol=1e-10, atol=0)


def test_reading_a_parameters_metadata_is_not_a_use():
    # A forward that reads a weight's dtype, shape or device (to cast or size its input) does not move that weight
    # off its layer's rule: the read carries no gradient.
    from fisherx.fisher import engine

    class Casting(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            w = self.fc.weight
            x = x.to(dtype=w.dtype, device=w.device)[:, : w.shape[1]]
            return self.fc(x * w.dim() * len(w.tolist()) / w.size(0))

    model = Casting().double().eval()
    x, y = torch.randn(B, 5), torch.randint(0, 3, (B,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback, no whole-model path
        f = fisherx.fisher_diag(model, (x, y), progress=False)
    plan = engine._PLANS[model][1]
    assert plan.rule == {"fc": {"weight": "fc.weight", "bias": "fc.bias"}} and not plan.fallback
    ref = naive_fisher(model, x, y)
    for n, r in ref.items():
        assert torch.allclose(f[n], r, rtol=1e-10, atol=0)


def test_plan_is_cached_and_invalidated(monkeypatch):
    # A loop of small calls probes once; a change of input shape, parameter set, parameter object or training
    # flags probes again, and the results stay exact.
    from fisherx.fisher import engine

    probes = []
    real = engine._Plan.__init__

    def counting(self, *a, **k):
        probes.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(engine._Plan, "__init__", counting)
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    for _ in range(3):
        fisherx.fisher_diag(m, (x, y), progress=False)
    assert len(probes) == 1
    fisherx.fisher_diag(m, (x[:4], y[:4]), progress=False)  # another batch size: same plan
    assert len(probes) == 1
    fisherx.fisher_diag(
        m,
        (x[:, None].expand(6, 2, 4), y),
        loss=lambda o, t: F.cross_entropy(o.mean(1), t, reduction="none"),
        progress=False,
    )
    assert len(probes) == 2, "a new input shape"
    fisherx.fisher_diag(m, (x, y), params=["2.weight"], progress=False)
    assert len(probes) == 3, "another parameter set"
    m[2].weight = nn.Parameter(m[2].weight.detach().clone())
    f = fisherx.fisher_diag(m, (x, y), progress=False)
    assert len(probes) == 4, "a new parameter object"
    m.eval()  # built in training mode
    fisherx.fisher_diag(m, (x, y), progress=False)
    assert len(probes) == 5, "other training flags"
    for k, r in naive_fisher(m, x, y).items():
        assert (f[k] - r).norm() <= 1e-10 * r.norm()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (33, 1000), (3, 70000)])
def test_group_norm_row_stats_match_var_mean(shape, dtype, monkeypatch):
    from fisherx.fisher.rules import norm

    monkeypatch.setattr(norm, "STATS_CHUNK", 1000)  # several chunks, a ragged last one
    torch.manual_seed(6)
    x = (3 + torch.randn(shape[1], shape[0], dtype=dtype)).t()  # non-contiguous rows, a mean well off zero
    mean, rstd = norm._row_stats(x, 1e-5)
    var, ref_mean = torch.var_mean(x.double(), dim=1, unbiased=False)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(mean.double(), ref_mean, rtol=tol, atol=tol)
    torch.testing.assert_close(rstd.double(), torch.rsqrt(var + 1e-5), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", ["bn", "gn", "bn-sliced", "gn-boot"])
def test_sqgrad_norm_nchw_per_channel_path(layout, dtype):
    # The CPU kernel's path for NCHW with statistics constant over positions (BatchNorm, GroupNorm): blocks of 64
    # positions plus a ragged tail, against the float64 reference; also a channel-sliced (non-contiguous) input.
    from fisherx import _ops
    from fisherx import _reference as ref
    from fisherx.fisher.rules.norm import _to_bpc

    torch.manual_seed(7)
    b, c, h, w = 3, 5, 11, 13  # 143 positions: two blocks and a tail of 15
    r = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    x, g = r(b, c + 2, h, w)[:, 1 : c + 1] if layout == "bn-sliced" else r(b, c, h, w), r(b, c, h, w)
    xb, gb = _to_bpc(x), _to_bpc(g)
    if layout.startswith("bn"):
        mean, rstd = r(c).expand_as(xb), r(c).abs().add(0.1).expand_as(xb)
    else:
        mean, rstd = (3 + r(b, 1, c)).expand_as(xb), r(b, 1, c).abs().add(0.1).expand_as(xb)
    wts = torch.poisson(torch.ones(4, b, dtype=dtype)) if layout.endswith("boot") else None
    got = _ops.sqgrad_norm(gb, xb, mean, rstd, wts)
    want = ref.sqgrad_norm(gb, xb, mean, rstd, wts)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(got, want, **tol)


class _Switch(nn.Module):
    """A forward that depends on a plain attribute, which the plan cache's key cannot see."""

    def __init__(self):
        super().__init__()
        self.lin, self.head, self.twice = nn.Linear(4, 4), nn.Linear(4, 3), False

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return self.head(torch.tanh(self.lin(h)) if self.twice else h)


def test_stale_cached_plan_is_probed_again():
    torch.manual_seed(8)
    m = _Switch().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    fisherx.fisher_diag(m, (x, y), progress=False)
    m.twice = True  # lin now runs twice: the cached plan is stale
    f = fisherx.fisher_diag(m, (x, y), progress=False)
    for k, r in naive_fisher(m, x, y).items():
        assert (f[k] - r).norm() <= 1e-10 * r.norm(), k
