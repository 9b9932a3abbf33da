"""Pure-PyTorch references of every fisherx kernel.

Each function here computes exactly what the op of the same name in :mod:`fisherx._ops` computes, in the
plainest float64 PyTorch, so tests can compare the two on random inputs and the ops can fall back to them where a
compiled kernel cannot run. They favour clarity over speed and memory.
"""

from __future__ import annotations

import math

import torch


def row_stats(x: torch.Tensor) -> torch.Tensor:
    """(rows, 2) float64: the sum of each row and its count of negative entries."""
    x = x.to(torch.float64)
    return torch.stack([x.sum(dim=1), (x < 0).sum(dim=1).to(torch.float64)], dim=1)


def ftd_column(sources: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d_k = (1/√2)·‖√(a_k/Σa_k) − √(b/Σb)‖₂ in float64, in the difference form (no cancellation)."""
    a = sources.to(torch.float64)
    b = target.to(torch.float64)
    a = a / a.sum(dim=1, keepdim=True)
    b = b / b.sum()
    return ((a.sqrt() - b.sqrt()).square().sum(dim=1) / 2).sqrt().clamp(0.0, 1.0)


def logdet_column(sources: torch.Tensor, target: torch.Tensor, sigma2: float, normalize: bool) -> torch.Tensor:
    """d_k = (1/n)·|Σ_j log((a_kj + σ²)/(b_j + σ²))|, on unit-trace vectors when ``normalize``."""
    a = sources.to(torch.float64)
    b = target.to(torch.float64)
    if normalize:
        a = a / a.sum(dim=1, keepdim=True)
        b = b / b.sum()
    n = a.shape[1]
    if n == 0:
        return torch.full((a.shape[0],), math.nan, dtype=torch.float64, device=a.device)
    return ((a + sigma2).log() - (b + sigma2).log()).sum(dim=1).abs() / n


def cosine_column(sources: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ_j a_kj·b_j / (‖a_k‖·‖b‖) in float64."""
    a = sources.to(torch.float64)
    b = target.to(torch.float64)
    return (a @ b) / (a.norm(dim=1) * b.norm())


# ----------------------------------------------------------------------------------------------------------------
# Fisher engine: per-sample squared-gradient sums (see fisherx/fisher and csrc/*/sqgrad.*)


def _weighted_batch_sum(sq: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Σ_b sq[b] (weights None), or (R, ...) Σ_b w[r,b]·sq[b]: the batch reduction, plain or bootstrapped."""
    if weights is None:
        return sq.sum(dim=0)
    return torch.tensordot(weights.to(torch.float64), sq, dims=([1], [0]))


def sqgrad_gemm(g: torch.Tensor, u: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """out[c,m,k] = Σ_b (Σ_p g[b,c,p,m]·u[b,c,p,k])²: squared per-sample GEMMs summed over the batch.

    ``g`` is (B, C, P, M) (output gradients, C weight groups, P positions), ``u`` is (B, C, P, K) (layer inputs,
    im2col'ed for convolutions); the result has the dtype of ``g``. Materialises every per-sample product.
    ``weights`` (R, B): (R, C, M, K) with out[r] = Σ_b w[r,b]·(g_bᵀu_b)² (the bootstrap replicates).
    """
    w = torch.matmul(g.to(torch.float64).transpose(-1, -2), u.to(torch.float64))  # (B, C, M, K)
    return _weighted_batch_sum(w.square(), weights).to(g.dtype)


def sqgrad_norm(
    g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(2, C): row 0 Σ_b (Σ_p g·(x − mean)·rstd)², row 1 Σ_b (Σ_p g)², all inputs (B, P, C) (broadcast views allowed).

    Row 0 is the summed squared per-sample gradient of a normalisation layer's weight, row 1 of its bias.
    ``weights`` (R, B): (R, 2, C), the batch sum weighted by w[r, b].
    """
    g64 = g.to(torch.float64)
    xhat = (x.to(torch.float64) - mean.to(torch.float64)) * rstd.to(torch.float64)
    per = torch.stack([(g64 * xhat).sum(dim=1), g64.sum(dim=1)], dim=1)  # (B, 2, C) per-sample sums
    return _weighted_batch_sum(per.square(), weights).to(g.dtype)


def sqgrad_conv(
    g: torch.Tensor,
    x: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_b (∂ℓ_b/∂W)² of a zero-padded convolution, W of shape (O, C/groups, *kernel_size), returned as
    (groups, O/groups, C/groups·prod(kernel_size)); ``padding`` is the leading pad per dim (the trailing side is
    whatever the output size ``g.shape[2:]`` needs). One torch weight-gradient per sample, in float64.
    With ``weights`` (R, B): the R sums Σ_b w[r,b]·(∂ℓ_b/∂W)², shape (R, groups, ...)."""
    n = len(kernel_size)
    b, o = g.shape[:2]
    c = x.shape[1]
    x64, g64 = x.to(torch.float64), g.to(torch.float64)
    pads = []
    for d in reversed(range(n)):  # F.pad order: last dim first
        need = (g.shape[2 + d] - 1) * stride[d] + (kernel_size[d] - 1) * dilation[d] + 1
        pads += [padding[d], need - padding[d] - x.shape[2 + d]]
    xp = torch.nn.functional.pad(x64, pads)  # negative amounts crop
    w = torch.zeros(o, c // groups, *kernel_size, dtype=torch.float64, device=x.device)
    wts = torch.ones(1, b, dtype=torch.float64, device=x.device) if weights is None else weights.to(torch.float64)
    out = torch.zeros(wts.shape[0], *w.shape, dtype=torch.float64, device=x.device)
    for i in range(b):
        gw = torch.ops.aten.convolution_backward(
            g64[i : i + 1],
            xp[i : i + 1],
            w,
            None,
            list(stride),
            [0] * n,
            list(dilation),
            False,
            [0] * n,
            groups,
            [False, True, False],
        )[1]
        out += wts[:, i].reshape(-1, *[1] * w.dim()) * gw.square()
    out = out.reshape(wts.shape[0], groups, o // groups, -1).to(g.dtype)
    return out[0] if weights is None else out
