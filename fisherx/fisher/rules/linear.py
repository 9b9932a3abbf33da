"""nn.Linear.

Input (B, in): Σ_i (g_i a_iᵀ)∘(g_i a_iᵀ) = (G∘G)ᵀ(A∘A), one matrix product on squared operands; bias Σ_i g_i².
Input (B, T..., in): the weight is shared across positions, W_i = G_iᵀA_i, so the squares do not factor:
:func:`fisherx._ops.sqgrad_gemm` squares and sums the per-sample products tile by tile; bias Σ_i (Σ_t g_it)².

Tied uses (:func:`factors`): the per-sample gradient of one use is Σ_t g_it a_itᵀ, handed to the engine as the
factors (G, A), so that several uses of one weight are summed before squaring without materialising it.

Bootstrap (weights w (R, B)): on (B, in) replicate r is ((G∘G)·diag(w_r))ᵀ(A∘A), all R as one GEMM of the stacked
(R·out, B) weighted squared gradients against (B, in); the stack is built a bounded number of replicates at a time
(:data:`STACK_BUDGET` elements). On sequences the kernel weights each per-sample tile R times.
"""

from __future__ import annotations

import torch
from torch import nn

from ... import _ops
from . import attach_hooks, batch_sum, register_rule

# Elements of the weighted (replicates × B × out) stack per GEMM (64 MiB in float32).
STACK_BUDGET = 1 << 24


def _weighted_sqgemm(g2: torch.Tensor, a2: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(R, out, in): out[r] = Σ_i w_ri·(g_i²)(a_i²)ᵀ = ((G∘G)ᵀdiag(w_r))(A∘A), R at a time in one matmul."""
    gs, as_ = g2.square(), a2.square()
    b, o = gs.shape
    w = weights.to(gs.dtype)
    step = max(1, STACK_BUDGET // max(1, b * o))
    parts = []
    for s in range(0, w.shape[0], step):
        stack = w[s : s + step, None, :] * gs.t()[None]  # (r, out, B)
        parts.append((stack.reshape(-1, b) @ as_).reshape(stack.shape[0], o, as_.shape[1]))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _squares(name: str, a: torch.Tensor, g: torch.Tensor, weight, bias, weights) -> dict:
    """{"weight": (out, in), "bias": (out,)} summed squares of an affine map x ↦ x·Wᵀ + b from its inputs ``a``
    (B, ..., in) and output gradients ``g`` (B, ..., out), for the parameters that require grad."""
    out = {}
    if a.dim() < 2:
        raise ValueError(f"{name} got an unbatched input of shape {tuple(a.shape)}; fisher_diag needs a batch dim")
    if a.dim() == 2:
        if weight.requires_grad:
            out["weight"] = g.square().t() @ a.square() if weights is None else _weighted_sqgemm(g, a, weights)
        if bias is not None and bias.requires_grad:
            out["bias"] = batch_sum(g.square(), weights)
        return out
    b = a.shape[0]
    a3 = a.reshape(b, -1, a.shape[-1])
    g3 = g.reshape(b, -1, g.shape[-1])
    if weight.requires_grad:
        w = None if weights is None else weights.to(g3.dtype)
        out["weight"] = _ops.sqgrad_gemm(g3.unsqueeze(1), a3.unsqueeze(1), w)[..., 0, :, :]
    if bias is not None and bias.requires_grad:
        out["bias"] = batch_sum(g3.sum(1).square(), weights)
    return out


@register_rule(nn.Linear)
def linear(layer: nn.Linear, activations, backprops, weights=None) -> dict:
    """Σ_i (∂ℓ_i/∂W)² and Σ_i (∂ℓ_i/∂b)² of ``y = x Wᵀ + b`` (or their R weighted sums, see the module)."""
    return _squares("Linear", activations[0], backprops, layer.weight, layer.bias, weights)


@register_rule("transformers.pytorch_utils.Conv1D")
def hf_conv1d(layer: nn.Module, activations, backprops, weights=None) -> dict:
    """Hugging Face's ``Conv1D`` (GPT-2's projections): a Linear whose weight is stored as (in, out), ``y = x W + b``;
    the Linear squares, transposed. Registered by name, so fisherx never imports transformers."""
    out = _squares("Conv1D", activations[0], backprops, layer.weight, layer.bias, weights)
    if "weight" in out:
        out["weight"] = out["weight"].transpose(-1, -2).contiguous()
    return out


def factors(layer: nn.Linear, x: torch.Tensor, g: torch.Tensor, name: str):
    """The per-sample gradient of ``name`` in factored form (for tied weights, see the engine's tied closed form):
    ``("outer", G, A)`` with G (B, 1, T, out), A (B, 1, T, in) and ∂ℓ_i/∂W = Σ_t G_it A_itᵀ; ``("sum", S)`` with
    S (B, out) = ∂ℓ_i/∂b = Σ_t g_it; None for a parameter it does not own."""
    b = x.shape[0]
    if name == "weight":
        return "outer", g.reshape(b, 1, -1, g.shape[-1]), x.reshape(b, 1, -1, x.shape[-1])
    if name == "bias":
        return "sum", g.reshape(b, -1, g.shape[-1]).sum(1)
    return None


attach_hooks(linear, factors=factors)
