"""Small models and the naive per-sample reference shared by the Fisher engine tests."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def naive_fisher(model: nn.Module, x, y, loss: str = "cross_entropy") -> dict[str, torch.Tensor]:
    """F_j = (1/N) Σ_i (∂ℓ_i/∂θ_j)² by one backward per sample, in float64 on a copy of the model (the truth)."""
    m = copy.deepcopy(model).double().eval()
    x = _double(x)
    y = y.double() if loss == "mse" else y
    params = {n: p for n, p in m.named_parameters() if p.requires_grad}
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    n = y.shape[0]
    for i in range(n):
        xi = _index(x, slice(i, i + 1))
        o = m(*xi) if isinstance(xi, tuple) else m(xi)
        if loss == "cross_entropy":
            li = F.cross_entropy(o, y[i : i + 1], reduction="sum")
        else:
            li = 0.5 * (o - y[i : i + 1]).square().sum()
        grads = torch.autograd.grad(li, list(params.values()), allow_unused=True)
        for (name, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                out[name] += g.square()
    return {k: v / n for k, v in out.items()}


def _double(x):
    if isinstance(x, tuple):
        return tuple(_double(t) for t in x)
    return x.double() if x.is_floating_point() else x


def _index(x, s):
    if isinstance(x, tuple):
        return tuple(t[s] for t in x)
    return x[s]


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus a 1x1 projection shortcut, ReLU (in place, after the sum)."""

    def __init__(self, cin=3, cout=6):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))
        self.head = nn.Linear(cout, 4)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)), inplace=True)
        h = self.b2(self.c2(h))
        h += self.short(x)
        h = F.relu(h, inplace=True)
        return self.head(h.mean((2, 3)))


class TransformerBlock(nn.Module):
    """Token + position Embedding, pre-LN single-head attention from Linear layers, MLP; logits (B, C, T)."""

    def __init__(self, vocab=11, d=8, t=5, classes=3):
        super().__init__()
        self.tok = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Embedding(t, d)
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, classes)

    def forward(self, idx):
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))[None]
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        h = h + self.proj(att @ v)
        h = h + self.mlp(self.ln2(h))
        return self.head(h).transpose(1, 2)  # (B, C, T): cross-entropy per token, summed per sample


class TiedLM(nn.Module):
    """Embedding whose matrix is also the output layer's weight (the usual tied-weights language model)."""

    def __init__(self, vocab=7, d=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.out = nn.Linear(d, vocab, bias=True)
        self.out.weight = self.emb.weight

    def forward(self, idx):
        return self.out(torch.tanh(self.mix(self.emb(idx)))).transpose(1, 2)


class TwiceApplied(nn.Module):
    """The same Linear called twice: its per-sample gradient is the sum of both uses."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.lin(torch.tanh(self.lin(x))))


class FunctionalUse(nn.Module):
    """A parent that uses its child's weight directly (h @ emb.weight.T): a use outside the owning module."""

    def __init__(self, vocab=6, d=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.lin = nn.Linear(d, d)

    def forward(self, idx):
        h = torch.tanh(self.lin(self.emb(idx)))
        return (h @ self.emb.weight.T).transpose(1, 2)


class Bilinear2(nn.Module):
    """A layer fisherx has no rule for: y = (x W) ∘ x + s, with its own parameters."""

    def __init__(self, d=5):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.s = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return (x @ self.w) * x + self.s


class WithUnknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.odd = Bilinear2(5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.odd(torch.relu(self.inp(x))))


class Attention(nn.Module):
    """nn.MultiheadAttention (no rule: the fallback), which returns a tuple and uses its child out_proj's weight in
    its own forward; called with keyword arguments."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(9, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, idx):
        h = self.emb(idx)
        a, _ = self.mha(h, h, value=h, need_weights=True)
        return self.head(a.mean(1))


# ---------------------------------------------------------------------------------------------------------------
# The model zoo of bench/bench_zoo.py. Each entry builds (model, input of n samples, labels) at a size: "bench"
# (the benchmark's) or "test" (small, for the float64 exactness test). One definition serves both.


def _vgg11(width: float):
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            w = max(2, int(v * width))
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True)]
            c = w
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c, 10))


def _depthwise_separable(c: int):
    def block(cin, cout, stride):
        return [
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]

    return nn.Sequential(
        nn.Conv2d(3, c, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        *block(c, 2 * c, 2),
        *block(2 * c, 4 * c, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * c, 10),
    )


def _audio(c: int):
    return nn.Sequential(
        nn.Conv1d(1, c, 16, stride=4),
        nn.ReLU(),
        nn.MaxPool1d(4),
        nn.Conv1d(c, 2 * c, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(4),
        nn.Conv1d(2 * c, 2 * c, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(2 * c, 10),
    )


def _groupnorm_cnn(c: int):
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        nn.GroupNorm(4, c),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1),
        nn.GroupNorm(8, 2 * c),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * c, 2 * c, 3, padding=1),
        nn.GroupNorm(8, 2 * c),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * c, 10),
    )


class Encoder(nn.Module):
    """Token embedding + learned positions (an Embedding of arange) + nn.TransformerEncoderLayer ×2 + mean-pool head."""

    def __init__(self, vocab: int, d: int, heads: int, t: int, layers: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(t, d)
        self.enc = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True) for _ in range(layers)
        )
        self.head = nn.Linear(d, 10)

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for layer in self.enc:
            h = layer(h)
        return self.head(h.mean(1))


class ViT(nn.Module):
    """Patch embedding (a strided Conv2d), a class token and learned positions as bare parameters of the model
    (expanded / added in its forward, as timm does), pre-LN blocks of Linear attention + MLP, LN, head on the
    class token."""

    def __init__(self, d: int, patch: int, image: int, depth: int = 2):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        self.cls = nn.Parameter(0.5 * torch.randn(1, 1, d))
        self.pos = nn.Parameter(0.5 * torch.randn(1, (image // patch) ** 2 + 1, d))
        self.blocks = nn.ModuleList(_ViTBlock(d) for _ in range(depth))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln(h)[:, 0])


class _ViTBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, h):
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        h = h + self.proj(att @ v)
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h))))


class Recurrent(nn.Module):
    """Embedding, an nn.LSTM or nn.GRU (batch_first), a Linear head on the last hidden state."""

    def __init__(self, cell: str, vocab: int, d: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(d, d, batch_first=True)
        self.head = nn.Linear(d, 10)

    def forward(self, idx):
        out, _ = self.rnn(self.emb(idx))
        return self.head(out[:, -1])


class TiedEmbeddingLM(nn.Module):
    """A language model whose output projection is the token embedding's matrix (logits (B, V, T))."""

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln = nn.LayerNorm(d)
        self.mix = nn.Linear(d, d)
        self.out = nn.Linear(d, vocab)
        self.out.weight = self.emb.weight

    def forward(self, idx):
        return self.out(torch.tanh(self.mix(self.ln(self.emb(idx))))).transpose(1, 2)


def _images(c, *s):
    return lambda n: (torch.randn(n, c, *s), torch.randint(0, 10, (n,)))


def _seq(vocab, t, per_token=False):
    return lambda n: (
        torch.randint(0, vocab, (n, t)),
        torch.randint(0, vocab if per_token else 10, (n, t) if per_token else (n,)),
    )


# name -> {size: (builder, input maker n -> (x, y))}
ZOO = {
    "mlp": {
        "bench": (
            lambda: nn.Sequential(
                nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
            ),
            _images(1, 28, 28),
        ),
        "test": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(20, 9), nn.ReLU(), nn.Linear(9, 10)), _images(1, 4, 5)),
    },
    "cnn": {
        "bench": (
            lambda: nn.Sequential(
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
            ),
            _images(1, 28, 28),
        ),
        "test": (
            lambda: nn.Sequential(
                nn.Conv2d(1, 3, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(3, 5, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(5, 10),
            ),
            _images(1, 6, 6),
        ),
    },
    "vgg11": {"bench": (lambda: _vgg11(1.0), _images(3, 32, 32)), "test": (lambda: _vgg11(1 / 32), _images(3, 32, 32))},
    "resnet18": {
        "bench": (lambda: _bn_eval(_resnet18(3, 32)), _images(3, 32, 32)),
        "test": (lambda: _bn_eval(_resnet18(3, 4)), _images(3, 4, 4)),
    },
    "depthwise": {
        "bench": (lambda: _bn_eval(_depthwise_separable(32)), _images(3, 32, 32)),
        "test": (lambda: _bn_eval(_depthwise_separable(3)), _images(3, 7, 7)),
    },
    "audio1d": {
        "bench": (lambda: _audio(32), lambda n: (torch.randn(n, 1, 4000), torch.randint(0, 10, (n,)))),
        "test": (lambda: _audio(3), lambda n: (torch.randn(n, 1, 203), torch.randint(0, 10, (n,)))),
    },
    "groupnorm": {
        "bench": (lambda: _bn_eval(_groupnorm_cnn(32)), _images(3, 32, 32)),
        "test": (lambda: _bn_eval(_groupnorm_cnn(8)), _images(3, 6, 6)),
    },
    "transformer": {
        "bench": (lambda: Encoder(1000, 128, 4, 32), _seq(1000, 32)),
        "test": (lambda: Encoder(13, 8, 2, 5), _seq(13, 5)),
    },
    "vit": {"bench": (lambda: ViT(128, 4, 32), _images(3, 32, 32)), "test": (lambda: ViT(8, 2, 6), _images(3, 6, 6))},
    "lstm": {
        "bench": (lambda: Recurrent("lstm", 1000, 128), _seq(1000, 32)),
        "test": (lambda: Recurrent("lstm", 13, 6), _seq(13, 5)),
    },
    "gru": {
        "bench": (lambda: Recurrent("gru", 1000, 128), _seq(1000, 32)),
        "test": (lambda: Recurrent("gru", 13, 6), _seq(13, 5)),
    },
    "tied_lm": {
        "bench": (lambda: TiedEmbeddingLM(2000, 128), _seq(2000, 32, per_token=True)),
        "test": (lambda: TiedEmbeddingLM(11, 6), _seq(11, 5, per_token=True)),
    },
}


def _resnet18(c, image):
    from fisherx.models import resnet18

    return resnet18(c, 10, image)


def _bn_eval(m: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters (BatchNorm/GroupNorm/LayerNorm), then eval mode."""
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
        if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and mod.weight is not None:
            with torch.no_grad():
                mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return m.eval()


class SharedLayers(nn.Module):
    """Tied uses of every kind the closed form takes: a Linear applied ``k`` times (2-D or sequence input), a Conv2d
    applied twice, an Embedding looked up twice (padding_idx, scale_grad_by_freq) and tied to the output layer."""

    def __init__(self, kind: str, k: int = 2):
        super().__init__()
        self.kind, self.k = kind, k
        if kind == "conv":
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.head = nn.Linear(3, 7)
            return
        self.lin = nn.Linear(6, 6)
        self.out = nn.Linear(6, 7)
        if kind.startswith("emb"):
            self.emb = nn.Embedding(7, 6, padding_idx=1, scale_grad_by_freq=kind == "emb-freq")
            self.out.weight = self.emb.weight

    def forward(self, x):
        if self.kind == "conv":
            h = self.conv(torch.tanh(self.conv(x)))
            return self.head(h.mean((2, 3)))
        if self.kind.startswith("emb"):
            h = self.emb(x) + 0.5 * self.emb(x.flip(1))  # two lookups, plus the output projection: three uses
            return self.out(torch.tanh(self.lin(h))).mean(1)
        h = x
        for _ in range(self.k):
            h = torch.tanh(self.lin(h))
        return self.out(h if h.dim() == 2 else h.mean(1))


class SharedCalls(nn.Module):
    """Layers called on an input that is the same for every sample, their outputs broadcast over the batch: a
    learned position embedding of (1, T) position ids (as Hugging Face models call it, moved with .to) and one of
    arange(T) used twice (added and multiplied), a Linear on a fixed grid, a LayerNorm of a buffer; and ``mixed``,
    whose output is also used in a matmul (so it must not take the shared route)."""

    def __init__(self, d=4, t=3):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.wpe = nn.Embedding(t + 2, d)
        self.pos = nn.Embedding(t, d)
        self.grid = nn.Linear(2, d)
        self.norm = nn.LayerNorm(d)
        self.mixed = nn.Linear(d, d)
        self.register_buffer("coords", torch.randn(t, 2))
        self.register_buffer("table", torch.randn(t, d))
        self.register_buffer("square", torch.randn(d, d) / d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        t = x.shape[1]
        ids = torch.arange(t, device=x.device)
        h = self.lin(x) + self.wpe(ids[None]).to(x.device)  # .to hands the same tensor on, as in HF's GPT-2
        p = self.pos(ids)
        h = torch.tanh(h * p) + p + self.grid(self.coords)
        h = h - self.norm(self.table)
        m = self.mixed(self.square)
        h = torch.tanh(h + m[0]) @ m
        return self.head(h.mean(1))


class BroadcastParams(nn.Module):
    """Bare parameters broadcast over the batch in a forward: a class token (expand + cat), a position table
    added as (1, T, d) and as (T, d) (no batch dim), a layer scale multiplied in place; and ``mixed``, broadcast
    once and also used in a matmul (so it must not take the broadcast route)."""

    def __init__(self, d=4, t=3):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, t + 1, d))
        self.pos2 = nn.Parameter(torch.randn(t + 1, d))
        self.scale = nn.Parameter(torch.randn(d))
        self.mixed = nn.Parameter(torch.randn(d, d) / d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.lin(x)], dim=1)
        h = torch.tanh(h + self.pos) - self.pos2
        h = self.lin(h)
        h *= self.scale
        h = torch.tanh(h * self.mixed[0] + h @ self.mixed)
        return self.head(h.mean(1))
