"""nn.Embedding: per-sample gradients are sparse rows.

Row v of sample i's gradient is Σ_{t: idx_it = v} g_it (divided by the count when ``scale_grad_by_freq``), so
tokens repeated inside one sample add up before squaring. Rows are summed per (sample, token) key with one
index_add over the B·T lookups, squared, and scattered into the (V, d) result: memory O(B·T·d), never O(B·V·d).
Bootstrap (weights (R, B)): each squared row is scaled by its sample's R weights and scattered into (R, V, d), a
bounded number of replicates at a time (:data:`SCATTER_BUDGET` elements of weighted rows).
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_rule

SCATTER_BUDGET = 1 << 24


@register_rule(nn.Embedding)
def embedding(layer: nn.Embedding, activations, backprops, weights=None) -> dict:
    """Σ_i (Σ_{t: idx_it = v} ∂ℓ_i/∂e_it)² for every row v (padding_idx rows stay 0, as in torch's gradient)."""
    if not layer.weight.requires_grad:
        return {}
    idx, g = activations[0], backprops
    b = idx.shape[0]
    v, d = layer.weight.shape
    flat = idx.reshape(b, -1)
    g = g.reshape(b, flat.shape[1], d).reshape(-1, d)
    key = (torch.arange(b, device=idx.device)[:, None] * v + flat).reshape(-1)
    uniq, inv = torch.unique(key, return_inverse=True)
    rows = torch.zeros(uniq.numel(), d, dtype=g.dtype, device=g.device).index_add_(0, inv, g)
    if layer.scale_grad_by_freq:
        counts = torch.bincount(inv, minlength=uniq.numel()).to(g.dtype)
        rows = rows / counts[:, None]
    token = uniq % v
    if weights is None:
        out = torch.zeros(v, d, dtype=g.dtype, device=g.device).index_add_(0, token, rows.square())
    else:
        sq, w = rows.square(), weights.to(g.dtype)[:, uniq // v]  # (R, keys): the weight of each key's sample
        out = torch.zeros(w.shape[0], v, d, dtype=g.dtype, device=g.device)
        step = max(1, SCATTER_BUDGET // max(1, sq.numel()))
        for s in range(0, w.shape[0], step):
            out[s:s + step].index_add_(1, token, w[s:s + step, :, None] * sq[None])
    if layer.padding_idx is not None:
        out[..., layer.padding_idx, :] = 0
    return {"weight": out}
