"""Normalisation layers: BatchNorm (eval), LayerNorm, GroupNorm, RMSNorm.

With x̂ the normalised input, the per-sample gradients are ∂ℓ_i/∂γ_c = Σ_positions g·x̂ and ∂ℓ_i/∂β_c = Σ_positions g;
:func:`fisherx._ops.sqgrad_norm` forms x̂ = (x − mean)·rstd on the fly and squares and sums both in one pass.
Each rule only lays its tensors out as (B, positions, channels) views and supplies mean and rstd (broadcast),
computed without torch's var_mean (5-20× slower on the CPU): LayerNorm's from native_layer_norm, GroupNorm's by
:func:`_row_stats` (native_group_norm would also write a normalised copy of the whole input).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ... import _ops
from . import register_rule


def _to_bpc(t: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) → (B, P, C) as a view (P = prod S)."""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)


def _result(layer: nn.Module, sq: torch.Tensor, shape) -> dict:
    """Split the kernel's (2, C) output, or (R, 2, C) with bootstrap weights, into weight and bias."""
    shape = (*sq.shape[:-2], *([shape] if isinstance(shape, int) else shape))
    out = {}
    if layer.weight is not None and layer.weight.requires_grad:
        out["weight"] = sq[..., 0, :].reshape(shape)
    if getattr(layer, "bias", None) is not None and layer.bias.requires_grad:
        out["bias"] = sq[..., 1, :].reshape(shape)
    return out


def _w(weights, x):
    return None if weights is None else weights.to(x.dtype)


@register_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def batch_norm(layer: nn.modules.batchnorm._BatchNorm, activations, backprops, weights=None) -> dict:
    """Eval-mode BatchNorm: x̂ = (x − running_mean)/√(running_var + ε), per channel."""
    if layer.training or layer.running_mean is None:
        raise RuntimeError(
            f"{type(layer).__name__} normalises with batch statistics (training mode or track_running_stats=False), "
            "which couples the samples; per-sample gradients are undefined"
        )
    assert layer.running_var is not None  # tracked together with running_mean
    x, g = activations[0], backprops
    xb, gb = _to_bpc(x), _to_bpc(g)
    mean = layer.running_mean.to(x.dtype).expand_as(xb)
    rstd = torch.rsqrt(layer.running_var.to(x.dtype) + layer.eps).expand_as(xb)
    return _result(layer, _ops.sqgrad_norm(gb, xb, mean, rstd, _w(weights, x)), layer.num_features)


def _over_normalized_shape(x: torch.Tensor, normalized_shape) -> torch.Tensor:
    """(B, positions, D): the trailing ``normalized_shape`` dims flattened into D, the rest into positions."""
    return x.reshape(x.shape[0], -1, math.prod(normalized_shape))


@register_rule(nn.LayerNorm)
def layer_norm(layer: nn.LayerNorm, activations, backprops, weights=None) -> dict:
    """x̂ = (x − mean)/√(var + ε) over the trailing ``normalized_shape`` dims; γ, β of that shape."""
    x, g = activations[0], backprops
    xb = _over_normalized_shape(x, layer.normalized_shape)
    _, mean, rstd = torch.native_layer_norm(xb, xb.shape[2:], None, None, layer.eps)  # (B, positions, 1)
    sq = _ops.sqgrad_norm(g.reshape(xb.shape), xb, mean.expand_as(xb), rstd.expand_as(xb), _w(weights, x))
    return _result(layer, sq, layer.normalized_shape)


# Elements of the centred temporary per chunk of rows in _row_stats (1 MiB in float32: stays in cache).
STATS_CHUNK = 1 << 18


def _row_stats(xv: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1/√(var + ε)) of each row of ``xv`` (biased variance), two-pass: the mean, then ‖x − mean‖²/n a few
    rows at a time, so the centred copy never exists whole."""
    mean = xv.mean(1)
    var = torch.empty_like(mean)
    step = max(1, STATS_CHUNK // max(1, xv.shape[1]))
    for s in range(0, xv.shape[0], step):
        var[s : s + step] = torch.linalg.vector_norm(xv[s : s + step] - mean[s : s + step, None], dim=1).square_()
    return mean, torch.rsqrt(var.div_(xv.shape[1]).add_(eps))


@register_rule(nn.GroupNorm)
def group_norm(layer: nn.GroupNorm, activations, backprops, weights=None) -> dict:
    """x̂ = (x − mean)/√(var + ε) per sample and group of C/groups channels; γ, β per channel."""
    x, g = activations[0], backprops
    b, c = x.shape[:2]
    mean, rstd = _row_stats(x.reshape(b * layer.num_groups, -1), layer.eps)
    mean, rstd = mean.reshape(b, layer.num_groups), rstd.reshape(b, layer.num_groups)
    per = c // layer.num_groups
    rstd = rstd.repeat_interleave(per, dim=1)  # (B, C): small
    mean = mean.repeat_interleave(per, dim=1)
    xb, gb = _to_bpc(x), _to_bpc(g)
    sq = _ops.sqgrad_norm(gb, xb, mean[:, None, :].expand_as(xb), rstd[:, None, :].expand_as(xb), _w(weights, x))
    return _result(layer, sq, c)


if hasattr(nn, "RMSNorm"):

    @register_rule(nn.RMSNorm)
    def rms_norm(layer: nn.RMSNorm, activations, backprops, weights=None) -> dict:
        """x̂ = x/√(mean(x²) + ε) over the trailing ``normalized_shape`` dims; γ only."""
        x, g = activations[0], backprops
        xb = _over_normalized_shape(x, layer.normalized_shape)
        eps = layer.eps if layer.eps is not None else torch.finfo(x.dtype).eps
        rstd = torch.rsqrt(torch.linalg.vector_norm(xb, dim=2, keepdim=True).square_().div_(xb.shape[2]) + eps)
        sq = _ops.sqgrad_norm(
            g.reshape(xb.shape),
            xb,
            torch.zeros((), dtype=x.dtype, device=x.device).expand_as(xb),
            rstd.expand_as(xb),
            _w(weights, x),
        )
        return _result(layer, sq, layer.normalized_shape)
