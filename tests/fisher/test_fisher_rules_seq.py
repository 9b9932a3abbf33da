"""Attention and recurrent layers on the rule path: nn.MultiheadAttention, nn.TransformerEncoder, attention written
with F.scaled_dot_product_attention from nn.Linear, nn.LSTM / nn.GRU / nn.RNN. Each case equals the naive per-sample
loop (one backward per sample, float64) to ≤ 1e-10 relative in float64 and ≤ 1e-4 in float32, with the fallback and
the whole-model path made to fail (so the rules really ran) and no fallback warning; bootstrap replicates equal the
explicit resampling loop. Also: the fallback on modules returning tuples with None or scalar entries."""

from __future__ import annotations

import warnings
import zlib

import pytest
import torch
import torch.nn.functional as F
from fisher_models import naive_fisher
from test_fisher_bootstrap import _check_replicates
from torch import nn

import fisherx
from fisherx.fisher import engine as engine_mod
from fisherx.fisher.rules import fallback as fallback_mod

B, T, V, E = 7, 5, 11, 8  # odd batch and sequence sizes on purpose


def _tokens(b=B, t=T, classes=3):
    def make(dt):
        g = torch.Generator().manual_seed(b * 100 + t)
        idx = torch.randint(1, V, (b, t), generator=g)
        idx[:, -1] = 0  # a padding token: key_padding_mask cases mask it
        if b > 1 and t > 1:
            idx[0, -2] = 0
        return idx, torch.randint(0, classes, (b, t), generator=g)

    return make


class RecurrentLM(nn.Module):
    """Embedding → recurrent layer → per-token logits; optionally the final state feeds the logits too (so the
    gradients of h_n and c_n are not zero) and the initial state comes from the input (an hx argument)."""

    def __init__(self, rnn: nn.RNNBase, use_state=False, init_state=False):
        super().__init__()
        self.emb = nn.Embedding(V, rnn.input_size)
        self.rnn = rnn
        d = 2 if rnn.bidirectional else 1
        hout = rnn.proj_size or rnn.hidden_size
        self.head = nn.Linear(d * hout, 3)
        self.state_head = nn.Linear(hout, 3) if use_state else None
        self.cell_head = nn.Linear(rnn.hidden_size, 3) if use_state and rnn.mode == "LSTM" else None
        self.init = nn.Linear(rnn.input_size, hout) if init_state else None
        self.cinit = nn.Linear(rnn.input_size, rnn.hidden_size) if init_state and rnn.mode == "LSTM" else None

    def forward(self, idx):
        h = self.emb(idx)
        args = ()
        if self.init is not None:
            n = self.rnn.num_layers * (2 if self.rnn.bidirectional else 1)
            h0 = torch.tanh(self.init(h.mean(1)))[None].expand(n, -1, -1).contiguous()
            if self.cinit is not None:
                h0 = (h0, self.cinit(h.mean(1))[None].expand(n, -1, -1).contiguous())
            args = (h0,)
        x = h if self.rnn.batch_first else h.transpose(0, 1)
        out, state = self.rnn(x, *args)
        out = out if self.rnn.batch_first else out.transpose(0, 1)
        logits = self.head(out)
        if self.state_head is not None:
            hn, cn = state if isinstance(state, tuple) else (state, None)
            extra = self.state_head(hn[-1])
            if cn is not None:
                extra = extra + self.cell_head(torch.tanh(cn[0]))
            logits = logits + extra[:, None]
        return logits.transpose(1, 2)


class RawRecurrent(nn.Module):
    """A recurrent layer straight on the float input (which needs no gradient), its output then changed in place:
    the rule's own backward must neither need an input gradient nor see the in-place change."""

    def __init__(self, mode: str):
        super().__init__()
        self.rnn = _rnn(mode, num_layers=2)
        self.head = nn.Linear(5, 3)

    def forward(self, idx):
        x = torch.nn.functional.one_hot(idx, V).to(self.head.weight.dtype)[..., :6]
        out, _ = self.rnn(x)
        out.mul_(2.0)
        return self.head(out).transpose(1, 2)


class Attention(nn.Module):
    """Embedding → nn.MultiheadAttention (self- or cross-attention, any call options) → per-token logits; the returned
    attention weights, when asked for, feed the logits too."""

    def __init__(self, mha_kw=None, call_kw=None, cross=False, masks=()):
        super().__init__()
        mha_kw = dict(mha_kw or {})
        self.emb = nn.Embedding(V, E)
        self.mha = nn.MultiheadAttention(E, 2, **mha_kw)
        # no bias on the key input: a constant shift of all keys leaves the softmax unchanged, so its Fisher is 0
        self.kin = nn.Linear(E, mha_kw.get("kdim", E), bias=False) if cross else None
        self.vin = nn.Linear(E, mha_kw.get("vdim", E)) if cross else None
        self.head = nn.Linear(E, 3)
        src = T - 2 if cross else T
        src += int(mha_kw.get("add_bias_kv", False)) + int(mha_kw.get("add_zero_attn", False))
        self.wh = nn.Linear(src, 3) if (call_kw or {}).get("need_weights", True) else None
        self.call_kw, self.masks = dict(call_kw or {}), masks

    def _masks(self, idx, tgt, src, dtype):
        kw = {}
        if "padding" in self.masks:
            kw["key_padding_mask"] = idx[:, :src] == 0
        if "causal" in self.masks:
            kw["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(tgt, dtype=dtype)[:, :src]
            kw["is_causal"] = True
        if "per-head" in self.masks:  # a float (N·H, L, S) mask that depends on the sample's tokens
            diff = (idx[:, None, :tgt, None] - idx[:, None, None, :src]).to(dtype)
            kw["attn_mask"] = (0.3 * diff * torch.tensor([1.0, -0.5], dtype=dtype)[:, None, None]).reshape(-1, tgt, src)
        if "bool" in self.masks:
            kw["attn_mask"] = torch.ones(tgt, src, dtype=torch.bool).triu(2)
        return kw

    def forward(self, idx):
        h = self.emb(idx)
        q = k = v = h
        if self.kin is not None:
            k, v = self.kin(h[:, : T - 2]), self.vin(h[:, : T - 2])
        kw = dict(self.call_kw, **self._masks(idx, q.shape[1], k.shape[1], h.dtype))
        if not self.mha.batch_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        if self.kin is None and not self.mha.batch_first:
            k = v = q
        a, w = self.mha(q, k, value=v, **kw)
        a = a if self.mha.batch_first else a.transpose(0, 1)
        logits = self.head(a)
        if w is not None:
            logits = logits + self.wh(w if w.dim() == 3 else w.mean(1))
        return logits.transpose(1, 2)


class Encoder(nn.Module):
    """Embedding → nn.TransformerEncoder of 2 TransformerEncoderLayers (dropout set, but off in eval) → logits."""

    def __init__(self, batch_first=True, norm_first=False, padding=False, causal=False):
        super().__init__()
        self.emb = nn.Embedding(V, E)
        layer = nn.TransformerEncoderLayer(E, 2, 16, dropout=0.1, batch_first=batch_first, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(E, 3)
        self.batch_first, self.padding, self.causal = batch_first, padding, causal

    def forward(self, idx):
        h = self.emb(idx)
        h = h if self.batch_first else h.transpose(0, 1)
        kw = {}
        if self.padding:
            kw["src_key_padding_mask"] = idx == 0
        if self.causal:
            kw["mask"] = nn.Transformer.generate_square_subsequent_mask(idx.shape[1], dtype=h.dtype)
            kw["is_causal"] = True
        h = self.enc(h, **kw)
        h = h if self.batch_first else h.transpose(0, 1)
        return self.head(h).transpose(1, 2)


class SdpaBlock(nn.Module):
    """Causal attention written with F.scaled_dot_product_attention between nn.Linear layers (Linear rules only)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.qkv = nn.Linear(E, 3 * E)
        self.proj = nn.Linear(E, E)
        self.head = nn.Linear(E, 3)

    def forward(self, idx):
        h = self.emb(idx)
        b, t, _ = h.shape
        q, k, v = self.qkv(h).reshape(b, t, 3, 2, E // 2).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, E)
        return self.head(h + self.proj(a)).transpose(1, 2)


def _rnn(mode, **kw):
    kw.setdefault("batch_first", True)
    if mode == "RNN_RELU":
        return nn.RNN(6, 5, nonlinearity="relu", **kw)
    return {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN}[mode](6, 5, **kw)


RECURRENT = []
for _mode in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
    RECURRENT += [
        (f"{_mode}-1layer", lambda m=_mode: RecurrentLM(_rnn(m)), _tokens()),
        (
            f"{_mode}-2layer-bidir-seqfirst-state",
            lambda m=_mode: RecurrentLM(_rnn(m, num_layers=2, bidirectional=True, batch_first=False), use_state=True),
            _tokens(),
        ),
        (
            f"{_mode}-nobias-hx",
            lambda m=_mode: RecurrentLM(_rnn(m, bias=False, num_layers=2), use_state=True, init_state=True),
            _tokens(),
        ),
    ]
RECURRENT += [
    (
        "LSTM-proj-2layer-bidir",
        lambda: RecurrentLM(
            nn.LSTM(6, 5, num_layers=2, bidirectional=True, proj_size=3, batch_first=True),
            use_state=True,
            init_state=True,
        ),
        _tokens(),
    ),
    ("LSTM-B1", lambda: RecurrentLM(_rnn("LSTM", num_layers=2), use_state=True), _tokens(b=1)),
    ("LSTM-raw-input-inplace-output", lambda: RawRecurrent("LSTM"), _tokens()),
    ("GRU-raw-input-inplace-output", lambda: RawRecurrent("GRU"), _tokens()),
    (
        "GRU-T1-seqfirst-hx",
        lambda: RecurrentLM(_rnn("GRU", batch_first=False), use_state=True, init_state=True),
        _tokens(t=1),
    ),
]
ATTENTION = [
    ("mha-weights", lambda: Attention(), _tokens()),
    ("mha-no-weights", lambda: Attention(call_kw={"need_weights": False}), _tokens()),
    (
        "mha-per-head-weights-seqfirst",
        lambda: Attention({"batch_first": False}, {"average_attn_weights": False}),
        _tokens(),
    ),
    ("mha-seqfirst-no-weights", lambda: Attention({"batch_first": False}, {"need_weights": False}), _tokens()),
    ("mha-batchfirst", lambda: Attention({"batch_first": True}), _tokens()),
    ("mha-no-bias", lambda: Attention({"batch_first": True, "bias": False}), _tokens()),
    (
        "mha-bias-kv-zero-attn",
        lambda: Attention({"batch_first": True, "add_bias_kv": True, "add_zero_attn": True}),
        _tokens(),
    ),
    ("mha-kdim-vdim", lambda: Attention({"batch_first": True, "kdim": 5, "vdim": 3}, cross=True), _tokens()),
    (
        "mha-kdim-vdim-seqfirst",
        lambda: Attention({"kdim": 5, "vdim": 3}, {"need_weights": False}, cross=True),
        _tokens(),
    ),
    ("mha-cross-packed", lambda: Attention({"batch_first": True}, cross=True, masks=("padding",)), _tokens()),
    ("mha-padding", lambda: Attention({"batch_first": True}, masks=("padding",)), _tokens()),
    (
        "mha-padding-no-weights",
        lambda: Attention({"batch_first": True}, {"need_weights": False}, ("padding",)),
        _tokens(),
    ),
    ("mha-causal", lambda: Attention({"batch_first": True}, {"need_weights": False}, masks=("causal",)), _tokens()),
    ("mha-causal-weights", lambda: Attention({"batch_first": True}, masks=("causal",)), _tokens()),
    (
        "mha-causal-padding-bias-kv",
        lambda: Attention(
            {"batch_first": True, "add_bias_kv": True}, {"need_weights": False}, masks=("causal", "padding")
        ),
        _tokens(),
    ),
    (
        "mha-per-head-float-mask",
        lambda: Attention({"batch_first": True}, {"need_weights": False}, masks=("per-head", "padding")),
        _tokens(),
    ),
    ("mha-bool-mask", lambda: Attention({"batch_first": True}, masks=("bool",)), _tokens()),
    ("mha-B1", lambda: Attention({"batch_first": True}), _tokens(b=1)),
    ("encoder", lambda: Encoder(True, False), _tokens()),
    ("encoder-norm-first", lambda: Encoder(True, True), _tokens()),
    ("encoder-seqfirst", lambda: Encoder(False, False), _tokens()),
    ("encoder-seqfirst-norm-first", lambda: Encoder(False, True), _tokens()),
    ("encoder-padding", lambda: Encoder(True, False, padding=True), _tokens()),
    ("encoder-causal", lambda: Encoder(True, True, causal=True), _tokens(t=6)),
    ("encoder-B1", lambda: Encoder(False, True), _tokens(b=1)),
    ("sdpa-linear", SdpaBlock, _tokens()),
]
CASES = RECURRENT + ATTENTION


@pytest.fixture
def rules_only(monkeypatch):
    """Fail on the fallback or the whole-model path, and on their warnings (reset: each warns once per process)."""

    def refuse(*a, **k):
        raise AssertionError("the torch.func fallback ran: a rule should have handled this layer")

    for name in ("fallback_rule", "per_sample_grads", "_external"):
        monkeypatch.setattr(engine_mod, name, refuse)
    monkeypatch.setattr(fallback_mod, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def _assert_close(f, ref, dtype, name):
    assert list(f) == list(ref), "parameters covered, in model order"
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for pname, r in ref.items():
        got = f[pname]
        assert got.shape == r.shape and got.dtype == dtype
        scale = r.norm().item()
        assert scale > 0, f"{pname}: the reference is zero, the case does not test it"
        err = (got.double() - r).norm().item() / scale
        assert err <= tol, f"{name} {pname}: relative error {err:.3g} > {tol}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_naive_per_sample_loop(case, dtype, rules_only):
    name, build, inputs = case
    torch.manual_seed(zlib.crc32(name.encode()))
    x, y = inputs(dtype)
    model = build().to(dtype).eval()
    f = fisherx.fisher_diag(model, (x, y), progress=False)
    _assert_close(f, naive_fisher(model, x, y), dtype, name)


@pytest.mark.parametrize("block", [1, 100], ids=["block-per-step", "uneven-blocks"])
@pytest.mark.parametrize("case", [c for c in RECURRENT if c[0].startswith(("LSTM", "GRU"))], ids=lambda c: c[0])
def test_recurrent_backward_in_blocks_of_steps(case, block, monkeypatch, rules_only):
    # The LSTM and GRU backward form their step factors a block of steps at a time (BLOCK elements); the cases
    # above fit in one block, so here each step is its own block (1) or the 5 steps split 2 + 2 + 1 (100 elements
    # against B·H = 35).
    from fisherx.fisher.rules import recurrent

    monkeypatch.setattr(recurrent, "BLOCK", block)
    name, build, inputs = case
    torch.manual_seed(zlib.crc32(name.encode()))
    x, y = inputs(torch.float64)
    model = build().double().eval()
    f = fisherx.fisher_diag(model, (x, y), progress=False)
    _assert_close(f, naive_fisher(model, x, y), torch.float64, name)


BOOT = [
    "LSTM-2layer-bidir-seqfirst-state",
    "GRU-nobias-hx",
    "RNN_TANH-1layer",
    "LSTM-proj-2layer-bidir",
    "mha-weights",
    "mha-bias-kv-zero-attn",
    "mha-kdim-vdim",
    "encoder-seqfirst-norm-first",
    "encoder-padding",
]


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in BOOT], ids=BOOT)
def test_bootstrap_replicates_equal_explicit_resampling(case, rules_only):
    name, build, inputs = case
    torch.manual_seed(zlib.crc32(name.encode()))
    x, y = inputs(torch.float64)
    model = build().double().eval()
    seed = zlib.crc32(name.encode()) % 1000
    f = fisherx.fisher_diag(model, (x, y), progress=False, bootstrap=3, bootstrap_seed=seed)
    _assert_close(f, naive_fisher(model, x, y), torch.float64, name)
    _check_replicates(f, model, x, y, "cross_entropy", seed)


def test_recurrent_layers_match_in_several_batches():
    # Batches of 3: the recorded inputs and states are those of each batch, not of the probe.
    torch.manual_seed(3)
    model = RecurrentLM(_rnn("LSTM", num_layers=2, bidirectional=True), use_state=True).double().eval()
    x, y = _tokens(b=8)(torch.float64)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    _assert_close(fisherx.fisher_diag(model, dl, progress=False), naive_fisher(model, x, y), torch.float64, "lstm")


class PairOut(nn.Module):
    """A layer without a rule that returns (y, None, a scalar) or a nested (y, (None, z))."""

    def __init__(self, nested=False):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 5) / 5**0.5)
        self.nested = nested

    def forward(self, x):
        y = torch.tanh(x @ self.w) * x
        return (y, (None, y.sum(-1))) if self.nested else (y, None, 3)


class UsesPair(nn.Module):
    def __init__(self, nested=False):
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.odd = PairOut(nested)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        out = self.odd(self.inp(x))
        y = out[0]
        logits = self.head(y)
        return logits + out[1][1][:, None] if self.odd.nested else logits


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_fallback_handles_none_and_scalar_outputs_and_warns_once(nested, monkeypatch):
    monkeypatch.setattr(fallback_mod, "_warned", set())
    torch.manual_seed(4)
    model = UsesPair(nested).double().eval()
    x, y = torch.randn(B, 4, dtype=torch.float64), torch.randint(0, 3, (B,))
    with pytest.warns(RuntimeWarning, match="PairOut") as rec:
        f = fisherx.fisher_diag(model, (x, y), progress=False)
        fisherx.fisher_diag(model, (x, y), progress=False)
    assert sum("PairOut" in str(w.message) for w in rec) == 1, "one warning per module type"
    _assert_close(f, naive_fisher(model, x, y), torch.float64, "pair")


class SeqFirstOut(nn.Module):
    """A layer without a rule whose output is (T, B, d): its call cannot be read per sample off dim 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4) / 2)

    def forward(self, h):
        return torch.tanh(h @ self.w).transpose(0, 1)


def test_whole_model_path_warns_naming_the_parameters(monkeypatch):
    monkeypatch.setattr(fallback_mod, "_warned", set())
    model = nn.Sequential(nn.Embedding(V, 4), SeqFirstOut())
    head = nn.Linear(4, 3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = model, head

        def forward(self, idx):
            return self.head(self.body(idx).transpose(0, 1)).transpose(1, 2)

    net = Net().double()
    x, y = _tokens()(torch.float64)
    with pytest.warns(RuntimeWarning, match=r"body\.1\.w \(of SeqFirstOut\)"):
        f = fisherx.fisher_diag(net, (x, y), progress=False)
    _assert_close(f, naive_fisher(net, x, y), torch.float64, "external")


def test_packed_sequences_are_refused_clearly():
    rnn = nn.LSTM(3, 4, batch_first=True)

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            packed = nn.utils.rnn.pack_padded_sequence(x, torch.full((x.shape[0],), x.shape[1]), batch_first=True)
            return self.head(self.rnn(packed)[1][0][-1])

    x, y = torch.randn(4, 5, 3), torch.randint(0, 2, (4,))
    with pytest.raises(TypeError, match="PackedSequence"):
        fisherx.fisher_diag(Packed(), (x, y), progress=False)


def test_recurrent_layer_applied_twice_is_refused_clearly():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 3, batch_first=True)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.rnn(self.rnn(x)[0])[0][:, -1])

    x, y = torch.randn(4, 5, 3), torch.randint(0, 2, (4,))
    with pytest.raises(NotImplementedError, match="GRU.*several calls"):
        fisherx.fisher_diag(Twice(), (x, y), progress=False)


def test_attention_applied_twice_goes_through_the_tied_path():
    # Per-use gradients from the module's vjp (its (out, None) output included), summed per sample before squaring.
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, E)
            self.mha = nn.MultiheadAttention(E, 2, batch_first=True)
            self.head = nn.Linear(E, 3)

        def forward(self, idx):
            h = self.emb(idx)
            h = h + self.mha(h, h, h, need_weights=False)[0]
            return self.head(h + self.mha(h, h, h)[0]).transpose(1, 2)

    torch.manual_seed(5)
    model = Twice().double().eval()
    x, y = _tokens()(torch.float64)
    _assert_close(fisherx.fisher_diag(model, (x, y), progress=False), naive_fisher(model, x, y), torch.float64, "x2")
