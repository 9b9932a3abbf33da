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
            li = F.cross_entropy(o, y[i:i + 1], reduction="sum")
        else:
            li = 0.5 * (o - y[i:i + 1]).square().sum()
        grads = torch.autograd.grad(li, list(params.values()), allow_unused=True)
        for (name, _), g in zip(params.items(), grads):
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
        self.w = nn.Parameter(torch.randn(d, d) / d ** 0.5)
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
