"""nn.Conv1d, nn.Conv2d, nn.Conv3d (any stride, padding including 'same', padding mode, dilation, groups).

With U_i the im2col matrix of sample i (positions × in·k), per group W_i = G_iᵀU_i; the weight is shared across
positions, so Σ_i W_i∘W_i goes through :func:`fisherx._ops.sqgrad_conv`, which reads U straight from the input
(implicit im2col) and squares and sums the per-sample products tile by tile. Bias: Σ_i (Σ_positions g_i)².

Depthwise and other thin-group convolutions (few output channels per group, or a short K = C/groups·prod(k)) leave
the kernel's register tiles mostly empty; there the per-sample weight gradients are small (B × the weight) and
torch's own weight-gradient convolution computes them at the speed of a backward, by folding the batch into the
groups: input (1, B·C, *S), output gradient (1, B·O, *S'), groups B·groups (:func:`_folded`, a chunk at a time).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import nn

from ... import _ops
from . import attach_hooks, batch_sum, register_rule

# Elements of im2col workspace per chunk of the batch (64 MiB in float32): bounds the memory the rule adds.
UNFOLD_BUDGET = 1 << 24
# Thin groups go through _folded: fewer output channels per group than this, or a K below THIN_K.
THIN_M, THIN_K = 6, 16
_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}


def compiled_kernels(t: torch.Tensor) -> bool:
    """Whether the fused kernels run on ``t``'s device (CPU, or CUDA with usable kernels), else the unfold path."""
    return t.device.type == "cpu" or (t.device.type == "cuda" and _ops.cuda_kernels_usable(t.device.index or 0))


def unfold(x: torch.Tensor, layer: nn.modules.conv._ConvNd) -> torch.Tensor:
    """im2col of ``x`` (B, C, *S) for ``layer``: (B, groups, L, C/groups·prod(k)), L the output positions.

    Handles any number of spatial dims, stride, dilation, explicit/'same'/'valid' padding and padding modes by
    padding first (as the layer does) and taking strided windows.
    """
    n = x.dim() - 2
    pad = layer._reversed_padding_repeated_twice
    if any(pad):
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x = F.pad(x, pad, mode=mode)
    for i in range(n):
        span = layer.dilation[i] * (layer.kernel_size[i] - 1) + 1
        x = x.unfold(2 + i, span, layer.stride[i])  # appends the window dim
    if any(d > 1 for d in layer.dilation):
        x = x[(...,) + tuple(slice(None, None, d) for d in layer.dilation)]
    b, c = x.shape[:2]
    g = layer.groups
    out_sz = x.shape[2 : 2 + n]
    x = x.reshape(b, g, c // g, *out_sz, *layer.kernel_size)
    # (b, g, o..., c/g, k...): the K dim (c/g·k) contiguous after the copy, which the kernel packs fastest.
    perm = [0, 1, *range(3, 3 + n), 2, *range(3 + n, 3 + 2 * n)]
    L = 1
    for o in out_sz:
        L *= o
    return x.permute(perm).reshape(b, g, L, -1)


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv(layer: nn.modules.conv._ConvNd, activations, backprops, weights=None) -> dict:
    """Σ_i (∂ℓ_i/∂W)² via squared per-sample GEMMs on the im2col of the input; Σ_i (Σ_positions ∂ℓ_i/∂y_i)² for
    the bias. With bootstrap ``weights`` (R, B): the R sums Σ_i w_ri·(...)², each per-sample tile weighted in the
    kernel while in cache (memory: the R outputs).

    With the compiled kernels (CPU, CUDA) the im2col is implicit (:func:`fisherx._ops.sqgrad_conv` reads the
    input in place); elsewhere the input is unfolded a bounded chunk of the batch at a time.
    """
    x, g = activations[0], backprops
    if weights is not None:
        weights = weights.to(g.dtype)
    if x.dim() == layer.weight.dim() - 1:
        raise ValueError(f"{type(layer).__name__} got an unbatched input of shape {tuple(x.shape)}")
    b = x.shape[0]
    out = {}
    if layer.weight.requires_grad:
        thin = layer.out_channels // layer.groups < THIN_M or layer.weight[0].numel() < THIN_K
        if thin and x.dim() - 2 in _WEIGHT_GRAD:
            sq = _folded(layer, x, g, weights)
        elif compiled_kernels(x):
            n = x.dim() - 2
            pad = layer._reversed_padding_repeated_twice  # (last dim left, right, ..., first dim left, right)
            if layer.padding_mode != "zeros" and any(pad):
                x = F.pad(x, pad, mode=layer.padding_mode)
                lead = [0] * n
            else:
                lead = [pad[2 * (n - 1 - d)] for d in range(n)]
            sq = _ops.sqgrad_conv(
                g, x, list(layer.kernel_size), list(layer.stride), lead, list(layer.dilation), layer.groups, weights
            )
        else:
            sq = _unfolded(layer, x, g, weights)
        lead_dims = () if weights is None else (weights.shape[0],)
        out["weight"] = sq.reshape(*lead_dims, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        out["bias"] = batch_sum(g.reshape(b, g.shape[1], math.prod(g.shape[2:])).sum(2).square(), weights)
    return out


def _folded(layer, x, g, weights=None) -> torch.Tensor:
    """Σ_i (∂ℓ_i/∂W)² from per-sample weight gradients, computed by torch's weight-gradient convolution with the
    batch folded into the groups (sample i's channels form groups i·groups ... (i+1)·groups − 1), a chunk of
    samples at a time (:data:`UNFOLD_BUDGET` elements of per-sample gradients)."""
    n, groups = x.dim() - 2, layer.groups
    pad = layer._reversed_padding_repeated_twice  # (last dim left, right, ..., first dim left, right)
    left, right = pad[0::2][::-1], pad[1::2][::-1]
    if any(pad) and (layer.padding_mode != "zeros" or left != right):  # pad as the layer does, then none
        x = F.pad(x, pad, mode="constant" if layer.padding_mode == "zeros" else layer.padding_mode)
        left = [0] * n
    shape = layer.weight.shape
    chunk = max(1, min(x.shape[0], UNFOLD_BUDGET // max(1, layer.weight.numel())))
    acc = None
    for s in range(0, x.shape[0], chunk):
        xs, gs = x[s : s + chunk], g[s : s + chunk]
        b = xs.shape[0]
        per = _WEIGHT_GRAD[n](
            xs.reshape(1, b * xs.shape[1], *xs.shape[2:]),
            (b * shape[0], *shape[1:]),
            gs.reshape(1, b * gs.shape[1], *gs.shape[2:]),
            layer.stride,
            list(left),
            layer.dilation,
            b * groups,
        )
        part = batch_sum(per.reshape(b, -1).square_(), None if weights is None else weights[:, s : s + chunk])
        acc = part if acc is None else acc.add_(part)
    assert acc is not None  # the batch is never empty here
    return acc


def _unfolded(layer, x, g, weights=None) -> torch.Tensor:
    b, groups = x.shape[0], layer.groups
    go = g.reshape(b, groups, g.shape[1] // groups, math.prod(g.shape[2:])).transpose(2, 3)  # (B, groups, L, O/g)
    per_sample = max(1, go.shape[2] * layer.weight[0].numel() * groups)
    chunk = max(1, min(b, UNFOLD_BUDGET // per_sample))
    lead_dims = () if weights is None else (weights.shape[0],)
    acc = torch.zeros(*lead_dims, groups, go.shape[3], layer.weight[0].numel(), dtype=g.dtype, device=g.device)
    for s in range(0, b, chunk):
        w = None if weights is None else weights[:, s : s + chunk]
        acc.add_(_ops.sqgrad_gemm(go[s : s + chunk], unfold(x[s : s + chunk], layer), w))
    return acc


def factors(layer: nn.modules.conv._ConvNd, x: torch.Tensor, g: torch.Tensor, name: str):
    """The per-sample gradient of ``name`` in factored form for the engine's tied closed form: ``("outer", G, U)``
    with G (B, groups, L, O/groups) the output gradients, U (B, groups, L, C/groups·k) the im2col of ``x``, so
    ∂ℓ_i/∂W = Σ_l G_il U_ilᵀ per group; ``("sum", S)`` with S (B, O) for the bias."""
    b, groups = x.shape[0], layer.groups
    if name == "weight":
        go = g.reshape(b, groups, g.shape[1] // groups, math.prod(g.shape[2:])).transpose(2, 3)
        return "outer", go, unfold(x, layer)
    if name == "bias":
        return "sum", g.reshape(b, g.shape[1], -1).sum(2)
    return None


attach_hooks(conv, factors=factors)
