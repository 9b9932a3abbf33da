"""nn.MultiheadAttention.

Every weight of the layer is a Linear applied at every position, so per sample W_i = Σ_t δ_it x_itᵀ and
:func:`fisherx._ops.sqgrad_gemm` squares and sums those products tile by tile (no per-sample gradient in memory):
the query/key/value weights pair the gradients δq, δk, δv of the projected q, k, v with the layer's query, key and
value inputs; out_proj pairs the layer's output gradient with the attention context c = softmax(S)·v.

PyTorch's fused kernel keeps q, k, v and the attention probabilities to itself, so the rule recomputes them from the
recorded inputs with plain ops (S = q kᵀ/√d + mask, P = softmax(S), c = P v) and backpropagates by hand:
δc = G W_o, δP = δc vᵀ (+ the gradient of the returned weights), δv = Pᵀ δc, δS = P∘(δP − Σ_s δP∘P),
δq = δS k/√d, δk = δSᵀ q/√d. Masks (key_padding_mask, attn_mask, is_causal), add_bias_kv, add_zero_attn, packed
and separate projection weights, kdim/vdim and batch_first follow F.multi_head_attention_forward. Bootstrap
weights (R, B) go to the same kernel calls. Dropout is off (fisher_diag runs the model in eval mode).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from ... import _ops
from . import attach_hooks, batch_sum, register_rule

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def seq_sq(g: torch.Tensor, a: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Σ_i (Σ_t g_it a_itᵀ)² for g (B, T, M), a (B, T, K) (any strides): (M, K), or (R, M, K) with ``weights``."""
    w = None if weights is None else weights.to(g.dtype)
    return _ops.sqgrad_gemm(g.unsqueeze(1), a.unsqueeze(1), w)[..., 0, :, :]


def _batch_dims(layer: nn.MultiheadAttention, tensors) -> list[int]:
    # The output is (L, N, E) unless batch_first; the attention weights are (N, [H,] L, S) either way.
    return [0 if layer.batch_first else 1] + [0] * (len(tensors) - 1)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = not attended) as −inf/0, a float mask as is (torch's _canonical_mask)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def _mask(layer, a: dict, n: int, tgt: int, src: int, dtype) -> torch.Tensor | None:
    """The additive mask (N or 1, H or 1, L, S) of the scores, or None."""
    kpm, am, causal = a["key_padding_mask"], a["attn_mask"], a["is_causal"]
    if causal and am is None:
        raise ValueError("MultiheadAttention: is_causal=True needs attn_mask (as in torch)")
    if causal and kpm is None and not a["need_weights"]:
        # torch then drops attn_mask and lets scaled_dot_product_attention build the causal mask itself, over all
        # the keys (bias_k and the zero key included)
        am = torch.ones(tgt, src, dtype=torch.bool, device=a["query"].device).tril().logical_not()
    m = None
    am = _additive(am, dtype)
    if am is not None:
        m = am.reshape(1, 1, *am.shape[-2:]) if am.dim() == 2 else am.reshape(n, layer.num_heads, *am.shape[-2:])
    kpm = _additive(kpm, dtype)
    if kpm is not None:
        kpm = kpm.reshape(n, 1, 1, kpm.shape[-1])
        m = kpm if m is None else m + kpm
    if m is not None and m.shape[-1] < src:  # the bias_k / zero-attention key columns are never masked
        m = F.pad(m, (0, src - m.shape[-1]))
    return m


def _projections(layer) -> tuple:
    e = layer.embed_dim
    if layer._qkv_same_embed_dim:
        wq, wk, wv = layer.in_proj_weight.split(e)
    else:
        wq, wk, wv = layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight
    bq = bk = bv = None
    if layer.in_proj_bias is not None:
        bq, bk, bv = layer.in_proj_bias.split(e)
    return (wq, bq), (wk, bk), (wv, bv)


def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.data_ptr() == y.data_ptr() and x.shape == y.shape and x.stride() == y.stride()


def _attention_grads(layer, a: dict, g_out: torch.Tensor, g_w: torch.Tensor | None) -> dict:
    """Recompute the attention (inputs batch-first) and pull ``g_out`` (N, L, E) back to δq, δk, δv and c."""
    xq, xk, xv = a["query"], a["key"], a["value"]
    n, tgt, e = xq.shape
    h = layer.num_heads
    hd = e // h
    (wq, bq), (wk, bk), (wv, bv) = _projections(layer)
    with torch.no_grad():
        q, k, v = F.linear(xq, wq, bq), F.linear(xk, wk, bk), F.linear(xv, wv, bv)
        extra = []
        if layer.bias_k is not None:
            extra.append((layer.bias_k.reshape(1, 1, e).expand(n, 1, e), layer.bias_v.reshape(1, 1, e).expand(n, 1, e)))
        if layer.add_zero_attn:
            z = q.new_zeros(n, 1, e)
            extra.append((z, z))
        if extra:
            k = torch.cat([k] + [x for x, _ in extra], 1)
            v = torch.cat([v] + [y for _, y in extra], 1)
        src = k.shape[1]
        mask = _mask(layer, a, n, tgt, src, q.dtype)
        scale = 1.0 / math.sqrt(hd)
        qh = q.reshape(n, tgt, h, hd).transpose(1, 2)
        kh = k.reshape(n, src, h, hd).transpose(1, 2)
        vh = v.reshape(n, src, h, hd).transpose(1, 2)
        s = (qh * scale) @ kh.transpose(-1, -2)
        if mask is not None:
            s = s + mask
        p = torch.softmax(s, -1)
        ctx = (p @ vh).transpose(1, 2).reshape(n, tgt, e)
        dctx = (g_out @ layer.out_proj.weight).reshape(n, tgt, h, hd).transpose(1, 2)
        dp = dctx @ vh.transpose(-1, -2)
        if g_w is not None and a["need_weights"]:
            dp = dp + (g_w.unsqueeze(1) / h if a["average_attn_weights"] else g_w)
        dv = p.transpose(-1, -2) @ dctx
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        dq = (ds @ kh) * scale
        dk = (ds.transpose(-1, -2) @ qh) * scale
    return {
        "ctx": ctx,
        "dq": dq.transpose(1, 2).reshape(n, tgt, e),
        "dk": dk.transpose(1, 2).reshape(n, src, e),
        "dv": dv.transpose(1, 2).reshape(n, src, e),
    }


def _bind(layer, activations) -> dict:
    bound = _SIGNATURE.bind(layer, *activations, **activations.kwargs)
    bound.apply_defaults()
    a = dict(bound.arguments)
    if a["query"].dim() != 3:
        raise ValueError(
            f"MultiheadAttention got an unbatched query of shape {tuple(a['query'].shape)}; fisher_diag "
            "needs a batch dim"
        )
    if not layer.batch_first:
        for key in ("query", "key", "value"):
            a[key] = a[key].transpose(0, 1)
    return a


@register_rule(nn.MultiheadAttention)
def multihead_attention(layer: nn.MultiheadAttention, activations, backprops, weights=None) -> dict:
    """Σ_i (∂ℓ_i/∂θ)² of every parameter of the attention layer (or the R weighted sums, see the module)."""
    a = _bind(layer, activations)
    g_out, g_w = (backprops, None) if isinstance(backprops, torch.Tensor) else (backprops[0], backprops[1])
    if not layer.batch_first:
        g_out = g_out.transpose(0, 1)
    d = _attention_grads(layer, a, g_out, g_w)
    src = a["key"].shape[1]
    dq, dk, dv = d["dq"], d["dk"][:, :src], d["dv"][:, :src]
    out = {}
    if layer._qkv_same_embed_dim:
        if layer.in_proj_weight.requires_grad:
            if _same(a["query"], a["key"]) and _same(a["query"], a["value"]):  # self-attention: one kernel call
                out["in_proj_weight"] = seq_sq(torch.cat([dq, dk, dv], -1), a["query"], weights)
            else:
                out["in_proj_weight"] = torch.cat(
                    [seq_sq(dq, a["query"], weights), seq_sq(dk, a["key"], weights), seq_sq(dv, a["value"], weights)],
                    -2,
                )
    else:
        for name, g, x in (
            ("q_proj_weight", dq, "query"),
            ("k_proj_weight", dk, "key"),
            ("v_proj_weight", dv, "value"),
        ):
            if getattr(layer, name).requires_grad:
                out[name] = seq_sq(g, a[x], weights)
    if layer.in_proj_bias is not None and layer.in_proj_bias.requires_grad:
        out["in_proj_bias"] = batch_sum(torch.cat([dq.sum(1), dk.sum(1), dv.sum(1)], -1).square(), weights)
    out.update(_extra_and_out_proj(layer, d, g_out, src, weights))
    return out


def _extra_and_out_proj(layer, d: dict, g_out: torch.Tensor, src: int, weights) -> dict:
    """bias_k / bias_v (their key/value column, one per sample) and out_proj (the context against G)."""
    out = {}
    if layer.bias_k is not None:
        for name, g in (("bias_k", d["dk"]), ("bias_v", d["dv"])):
            if getattr(layer, name).requires_grad:
                sq = batch_sum(g[:, src].square(), weights)
                out[name] = sq.reshape(*sq.shape[:-1], 1, 1, sq.shape[-1])
    if layer.out_proj.weight.requires_grad:
        out["out_proj.weight"] = seq_sq(g_out, d["ctx"], weights)
    if layer.out_proj.bias is not None and layer.out_proj.bias.requires_grad:
        out["out_proj.bias"] = batch_sum(g_out.sum(1).square(), weights)
    return out


attach_hooks(multihead_attention, batch_dims=_batch_dims, claims=lambda layer: ("out_proj.weight", "out_proj.bias"))
