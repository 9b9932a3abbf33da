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

from . import attach_hooks, register_rule

SCATTER_BUDGET = 1 << 24


@register_rule(nn.Embedding)
def embedding(layer: nn.Embedding, activations, backprops, weights=None) -> dict:
    """Σ_i (Σ_{t: idx_it = v} ∂ℓ_i/∂e_it)² for every row v (padding_idx rows stay 0, as in torch's gradient)."""
    if not layer.weight.requires_grad:
        return {}
    v, d = layer.weight.shape
    key, rows = sample_rows(layer, activations[0], backprops)
    out = scatter_rows(rows.square(), key, v, weights)
    if layer.padding_idx is not None:
        out[..., layer.padding_idx, :] = 0
    return {"weight": out}


def scatter_rows(vals: torch.Tensor, key: torch.Tensor, v: int, weights: torch.Tensor | None) -> torch.Tensor:
    """Σ_keys vals into row key mod v: (V, d); with bootstrap ``weights`` (R, B) the (R, V, d) sums with each key's
    values scaled by its sample's weight (sample key div v), a bounded number of replicates at a time."""
    token = key % v
    if weights is None:
        return torch.zeros(v, vals.shape[1], dtype=vals.dtype, device=vals.device).index_add_(0, token, vals)
    w = weights.to(vals.dtype)[:, key // v]  # (R, keys): the weight of each key's sample
    out = torch.zeros(w.shape[0], v, vals.shape[1], dtype=vals.dtype, device=vals.device)
    step = max(1, SCATTER_BUDGET // max(1, vals.numel()))
    for s in range(0, w.shape[0], step):
        out[s : s + step].index_add_(1, token, w[s : s + step, :, None] * vals[None])
    return out


def sample_rows(layer: nn.Embedding, idx: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, rows): the nonzero rows of the per-sample gradients, key = i·V + v (sorted) for row v of sample i,
    row = Σ_{t: idx_it = v} g_it (÷ the count with ``scale_grad_by_freq``)."""
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
    return uniq, rows


def factors(layer: nn.Embedding, idx: torch.Tensor, g: torch.Tensor, name: str):
    """The per-sample gradient of the weight as sparse rows, ``("rows", keys, rows, V)`` (:func:`sample_rows`; the
    padding_idx row, which gets no gradient, is zero), for the engine's tied closed form."""
    if name != "weight":
        return None
    key, rows = sample_rows(layer, idx, g)
    v = layer.weight.shape[0]
    if layer.padding_idx is not None:
        rows = rows.masked_fill((key % v == layer.padding_idx)[:, None], 0)
    return "rows", key, rows, v


attach_hooks(embedding, factors=factors)
