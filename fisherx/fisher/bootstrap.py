"""Per-sample Poisson(1) bootstrap weights for the in-pass bootstrap of :func:`fisherx.fisher_diag`.

Replicate r of a Fisher is F_r = Σ_i w_ri·(∂ℓ_i/∂θ)² / Σ_i w_ri with w_ri ~ Poisson(1) independently per sample i
and replicate r (the Poisson bootstrap: as the number of samples grows it matches resampling N of N with
replacement, and it needs neither N in advance nor a pass per replicate).

The weight of (sample i, replicate r) is a pure function of (seed, i, r): a counter-based hash (SplitMix64) turned
into a uniform and then a Poisson(1) count by its inverse CDF. So the weights do not depend on the batch size, the
batch boundaries or the device, and two Fishers computed with the same seed on the same samples (F_ab and F_bb of
one FTD, say) see the same resampled data set in every replicate: a paired bootstrap of the distance.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MAX_REPLICATES = 100_000

# Poisson(1) CDF up to k = 20 (P(k > 20) < 1e-19, below float64's resolution of a uniform in [0, 1)).
_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(21)])

_M64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 arrays (wrapping arithmetic: numpy arrays do not trap overflow)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def poisson_weights(
    seed: int, start: int, n: int, replicates: int, *, dtype=torch.float64, device=None
) -> torch.Tensor:
    """(replicates, n) Poisson(1) counts w[r, j] for the samples with global indices start..start+n−1.

    w[r, j] depends only on (seed, start + j, r). ``seed`` may be any int (it is reduced mod 2⁶⁴).
    """
    if replicates < 0 or n < 0 or start < 0:
        raise ValueError(f"replicates, n and start must be non-negative, got {replicates}, {n}, {start}")
    key = _splitmix64(np.array([int(seed) & _M64], dtype=np.uint64))
    idx = _splitmix64(key + np.arange(start, start + n, dtype=np.uint64))  # one key per sample index
    h = _splitmix64(idx[None, :] + _splitmix64(np.arange(replicates, dtype=np.uint64))[:, None])
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    counts = np.searchsorted(_CDF, u, side="right")
    return torch.from_numpy(counts.astype(np.float64)).to(device=device, dtype=dtype)
