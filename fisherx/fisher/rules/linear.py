"""nn.Linear.

Input (B, in): Σ_i (g_i a_iᵀ)∘(g_i a_iᵀ) = (G∘G)ᵀ(A∘A), one matrix product on squared operands; bias Σ_i g_i².
Input (B, T..., in): the weight is shared across positions, W_i = G_iᵀA_i, so the squares do not factor:
:func:`fisherx._ops.sqgrad_gemm` squares and sums the per-sample products tile by tile; bias Σ_i (Σ_t g_it)².
"""
from __future__ import annotations

from torch import nn

from ... import _ops
from . import register_rule


@register_rule(nn.Linear)
def linear(layer: nn.Linear, activations, backprops) -> dict:
    """Σ_i (∂ℓ_i/∂W)² and Σ_i (∂ℓ_i/∂b)² of ``y = x Wᵀ + b``."""
    a, g = activations[0], backprops
    out = {}
    if a.dim() < 2:
        raise ValueError(f"Linear got an unbatched input of shape {tuple(a.shape)}; fisher_diag needs a batch dim")
    if a.dim() == 2:
        a2, g2 = a, g
        if layer.weight.requires_grad:
            out["weight"] = g2.square().t() @ a2.square()
        if layer.bias is not None and layer.bias.requires_grad:
            out["bias"] = g2.square().sum(0)
        return out
    b = a.shape[0]
    a3 = a.reshape(b, -1, a.shape[-1])
    g3 = g.reshape(b, -1, g.shape[-1])
    if layer.weight.requires_grad:
        out["weight"] = _ops.sqgrad_gemm(g3.unsqueeze(1), a3.unsqueeze(1))[0]
    if layer.bias is not None and layer.bias.requires_grad:
        out["bias"] = g3.sum(1).square().sum(0)
    return out
