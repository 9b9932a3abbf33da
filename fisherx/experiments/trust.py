"""Trustworthy distances: confidence intervals, the probability that a task is the closest, and sanity gates.

Two sources of uncertainty in a task distance d[a, b] (docs/trust.md):

- **the test samples** the Fishers are computed on: within one seed, the Poisson bootstrap of
  :func:`fisherx.fisher_diag` (``bootstrap=R``) gives R replicates of every Fisher; F_ab and F_bb taken with the same
  ``bootstrap_seed`` on b's test data are resampled alike, so ``d_r = metric(F_ab^r, F_bb^r)`` is a paired bootstrap
  replicate of d[a, b]. :func:`bootstrap_interval` of the d_r is the within-seed interval.
- **the ε-networks' seeds** (the papers' 10 runs): :func:`seed_interval` is Student's t interval for the mean over
  seeds, mean ± t_{S−1}·s/√S.

For every target b, :func:`closest_probability` counts over the pooled draws (seed × replicate) how often each
source is the closest one, and :func:`closest_verdicts` turns that into "T3 is the closest to T2 in 97% of 300
draws" or "no clear winner" when no source reaches :data:`CLEAR_WINNER`.

Sanity gates: :func:`fisher_concentration` (the share of tr(F) held by its :data:`CONCENTRATION_TOP` largest
entries; a Fisher above :data:`CONCENTRATION_LIMIT` is flagged as collapsed), :func:`check_self_distance` (the
interval of d[a, a] over the full sample and every replicate must be {0} up to rounding), and the ε-accuracy gate
of :func:`fisherx.task_distances`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..distance import DEFAULT_SIGMA2, distance_column
from . import metrics as _metrics

LEVEL = 0.95  # default confidence level of every interval
CLEAR_WINNER = 0.95  # a closest source is "clear" when it wins in at least this share of the draws
CONCENTRATION_TOP = 10  # a Fisher's 10 largest entries ...
CONCENTRATION_LIMIT = 0.5  # ... holding more than half of its trace: a collapsed Fisher (see fisher_concentration)
GATE_ACTIONS = ("warn", "refuse", "off")
SELF_DISTANCE_TOL = 1e-6  # |d(F, F) − exact| allowed for rounding (the same tolerance as task_distances)


class TrustWarning(UserWarning):
    """A sanity gate fired: a Fisher or a distance should not be trusted as it is."""


class GateError(ValueError):
    """A sanity gate fired with action="refuse"."""


def gate(action: str, message: str, stacklevel: int = 3) -> None:
    """Act on a failed sanity gate: ``"warn"`` (TrustWarning), ``"refuse"`` (GateError) or ``"off"`` (nothing)."""
    if action not in GATE_ACTIONS:
        raise ValueError(f"a gate action must be one of {', '.join(GATE_ACTIONS)}, got {action!r}")
    if action == "refuse":
        raise GateError(message)
    if action == "warn":
        warnings.warn(message, TrustWarning, stacklevel=stacklevel)


# ---------------------------------------------------------------------------------------------------------------
# Intervals


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def percentile_interval(draws, level: float = LEVEL, axis: int = 0) -> np.ndarray:
    """The bootstrap percentile interval: the (1 − level)/2 and (1 + level)/2 quantiles of ``draws`` along ``axis``.

    Returns the lower and upper bounds stacked on a new last axis (shape: ``draws`` without ``axis``, then 2).
    """
    _check_level(level)
    d = np.asarray(draws, dtype=np.float64)
    if d.shape[axis] == 0:
        raise ValueError("percentile_interval needs at least one draw")
    q = np.quantile(d, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=axis)
    return np.moveaxis(q, 0, -1)


BOOTSTRAP_METHODS = ("basic", "percentile")


def bootstrap_interval(estimate, draws, level: float = LEVEL, method: str = "basic", axis: int = 0) -> np.ndarray:
    """The bootstrap interval of a statistic from its full-sample ``estimate`` and its replicate ``draws``.

    ``"percentile"``: the quantiles q_lo, q_hi of the draws (:func:`percentile_interval`). ``"basic"`` (default):
    [2θ̂ − q_hi, 2θ̂ − q_lo], which reflects the draws around the estimate and so corrects the first-order bias.
    FTD computed from N samples is biased upwards (sampling noise adds distance); measured on synthetic Fishers
    (n = 8 entries, N = 500 samples, nominal 90%) the percentile interval covered 84-88% and the basic one 86-90%
    (docs/trust.md). Bounds stacked on a new last axis.
    """
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method must be one of {', '.join(BOOTSTRAP_METHODS)}, got {method!r}")
    q = percentile_interval(draws, level, axis)
    if method == "percentile":
        return q
    est = np.asarray(estimate, dtype=np.float64)
    return np.stack([2 * est - q[..., 1], 2 * est - q[..., 0]], axis=-1)


def _t_abs_cdf(t: float, df: int) -> float:
    """A(t|ν) = P(|T| ≤ t) for integer ν, t ≥ 0: the finite sums of Abramowitz & Stegun 26.7.3-26.7.4."""
    th = math.atan(t / math.sqrt(df))
    c2, s = math.cos(th) ** 2, math.sin(th)
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(2, df - 1, 2):  # 1 + ½cos²θ + (1·3)/(2·4)cos⁴θ + ...
            term *= c2 * (k - 1) / k
            total += term
        return s * total
    if df == 1:
        return 2 * th / math.pi
    term = total = math.cos(th)
    for k in range(3, df - 1, 2):  # cosθ + (2/3)cos³θ + (2·4)/(3·5)cos⁵θ + ...
        term *= c2 * (k - 1) / k
        total += term
    return 2 / math.pi * (th + s * total)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with integer ``df`` degrees of freedom.

    Newton's method on the exact CDF (finite sums for integer ν, A&S 26.7.3-4), started from the Cornish-Fisher
    expansion around the normal quantile (A&S 26.7.5); exact to ~1e-12 (no scipy needed).
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    z = float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))
    t = z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    for _ in range(50):
        f = (1 + _t_abs_cdf(t, df)) / 2 - p
        pdf = math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))
        step = f / pdf
        t -= step
        if abs(step) <= 1e-13 * max(1.0, abs(t)):
            break
    return t


def seed_interval(values, level: float = LEVEL, axis: int = 0) -> np.ndarray:
    """Student's t interval for the mean over seeds: mean ± t_{S−1, (1+level)/2}·s/√S along ``axis``.

    ``s`` is the sample standard deviation (ddof 1). Needs S ≥ 2 seeds. Bounds stacked on a new last axis.
    """
    _check_level(level)
    v = np.asarray(values, dtype=np.float64)
    s = v.shape[axis]
    if s < 2:
        raise ValueError(f"an interval over seeds needs at least 2 seeds, got {s}")
    mean, sd = v.mean(axis=axis), v.std(axis=axis, ddof=1)
    half = t_quantile((1.0 + level) / 2.0, s - 1) * sd / math.sqrt(s)
    return np.stack([mean - half, mean + half], axis=-1)


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap replicates of a distance column


def _bootstrap_seed(f, name: str):
    boot = f.meta.get("bootstrap") if hasattr(f, "meta") else None
    if getattr(f, "n_replicates", 0) == 0 or boot is None:
        raise ValueError(f"{name} has no bootstrap replicates: compute it with fisher_diag(..., bootstrap=R)")
    return boot.get("seed")


def replicate_column(
    sources: Sequence,
    target,
    metric: str = "ftd",
    sigma2: float = DEFAULT_SIGMA2,
    names: Sequence[str] | None = None,
    target_name: str = "target",
) -> np.ndarray:
    """(R, K) replicate distances d_r[k] = metric(sources[k]^r, target^r), one kernel launch per replicate.

    Every Fisher must carry R replicates drawn with the same ``bootstrap_seed`` on the same samples (so replicate
    r of each is the same resampled data set: a paired bootstrap); a mismatch is an error naming the Fisher.
    """
    names = list(names) if names is not None else [f"sources[{i}]" for i in range(len(sources))]
    seed, r = _bootstrap_seed(target, target_name), target.n_replicates
    for s, n in zip(sources, names, strict=True):
        if _bootstrap_seed(s, n) != seed or s.n_replicates != r:
            raise ValueError(
                f"{n} has {s.n_replicates} replicates with bootstrap seed {_bootstrap_seed(s, n)} but "
                f"{target_name} has {r} with seed {seed}: the replicates must be paired (same seed, "
                "same samples)"
            )
    tgt = target.replicates_flat()
    src = torch.stack([s.replicates_flat() for s in sources], dim=1)  # (R, K, n)
    out = np.empty((r, len(sources)))
    for i in range(r):
        out[i] = (
            distance_column(src[i], tgt[i], metric=metric, sigma2=sigma2, target_name=f"{target_name} replicate {i}")
            .cpu()
            .numpy()
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Which source is the closest


def closest_probability(draws, metric: str = "ftd") -> np.ndarray:
    """P[i, j]: the share of the draws in which source i is the closest to target j (i ≠ j; the diagonal is 0).

    ``draws`` is (N, K, K): N matrices d[a, b] (seeds × bootstrap replicates, pooled). "Closest" is the smallest
    distance, or the largest similarity for ``metric="cosine"``; ties go to the lower index.
    """
    d = np.array(draws, dtype=np.float64)
    if d.ndim != 3 or d.shape[1] != d.shape[2] or d.shape[0] == 0:
        raise ValueError(f"draws must be (N, K, K) with N >= 1, got shape {d.shape}")
    n, k, _ = d.shape
    if k < 2:
        raise ValueError("closest_probability needs at least 2 tasks")
    fill = _metrics.worst(metric)
    d[:, np.arange(k), np.arange(k)] = fill  # a task is not its own closest
    win = _metrics.pick_closest(metric)(d, axis=1)  # (N, K): the winning source per target
    p = np.zeros((k, k))
    for j in range(k):
        p[:, j] = np.bincount(win[:, j], minlength=k) / n
    return p


def closest_verdicts(prob: np.ndarray, names: Sequence[str], n_draws: int, threshold: float = CLEAR_WINNER) -> dict:
    """For every target, one sentence: "<source> is the closest to <target> in 97% of 300 draws", or
    "no clear winner for <target> (T3 60%, T1 40%)" when no source reaches ``threshold``."""
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0.5, 1], got {threshold}")
    out = {}
    for j, tgt in enumerate(names):
        col = prob[:, j]
        best = int(np.argmax(col))
        if col[best] >= threshold:
            out[tgt] = f"{names[best]} is the closest to {tgt} in {100 * col[best]:.0f}% of {n_draws} draws"
        else:
            order = [i for i in np.argsort(-col, kind="stable") if col[i] > 0][:3]
            out[tgt] = (
                f"no clear winner for {tgt} (" + ", ".join(f"{names[i]} {100 * col[i]:.0f}%" for i in order) + ")"
            )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Sanity gates


def fisher_concentration(f, top: int | None = None) -> float:
    """The share of the trace held by the ``top`` largest entries of a Fisher: Σ_{k largest} F_j / Σ_j F_j.

    ``top`` defaults to :data:`CONCENTRATION_TOP` = 10: "a handful of parameters". Trained Fishers are heavy-tailed
    but not that much: on the digits MLPs and CNNs of task_distances (32 Fishers, 51-53k entries) the 10 largest
    held 4-26% of the trace (while the top 0.1%, 51 entries, held up to 76%: a fraction of n flags healthy
    networks). A network with every ReLU dead and one label puts 90% in one output bias.
    """
    top = CONCENTRATION_TOP if top is None else top
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int (a number of entries), got {top!r}")
    flat = (f.flat() if hasattr(f, "flat") else torch.as_tensor(f).reshape(-1)).to(torch.float64)
    total = float(flat.sum())
    if not math.isfinite(total) or total <= 0.0:
        raise ValueError("fisher_concentration needs a Fisher with a positive, finite trace")
    return float(torch.topk(flat, min(top, flat.numel())).values.sum()) / total


def check_concentration(
    f, name: str, action: str = "warn", top: int | None = None, limit: float | None = None
) -> float:
    """Gate: flag a Fisher whose :func:`fisher_concentration` exceeds ``limit`` (default
    :data:`CONCENTRATION_LIMIT`, over the top :data:`CONCENTRATION_TOP` of entries); returns the statistic."""
    top = CONCENTRATION_TOP if top is None else top
    limit = CONCENTRATION_LIMIT if limit is None else limit
    c = fisher_concentration(f, top)
    if c > limit:
        gate(
            action,
            f"{name}: {100 * c:.1f}% of the Fisher's trace sits in its {top} largest entries (limit "
            f"{100 * limit:g}%): a collapsed Fisher whose distances say little about the task",
        )
    return c


def check_self_distance(values, metric: str, what: str, action: str = "warn") -> None:
    """Gate: d[a, a] compares a Fisher (or each of its bootstrap replicates) with itself, so it is exactly 0
    (cosine: 1). Its interval over ``values`` (the full-sample value and every replicate's, min to max) must be that
    single value up to rounding (:data:`SELF_DISTANCE_TOL`); one broken replicate is enough to fire."""
    v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    exact = _metrics.self_value(metric)
    finite = bool(np.all(np.isfinite(v)))
    lo, hi = (float(v.min()), float(v.max())) if finite else (float("nan"), float("nan"))
    if not (finite and exact - SELF_DISTANCE_TOL <= lo and hi <= exact + SELF_DISTANCE_TOL):
        gate(
            action,
            f"{what}: {metric}(F, F) ranges over [{lo:.3g}, {hi:.3g}] across the full sample and its "
            f"replicates; it must be {exact} up to rounding: a broken Fisher or kernel",
        )
