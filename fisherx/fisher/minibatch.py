"""The estimator of the FTD authors' published code, kept as a named option so that a figure can be checked
against it: squared gradients of mini-batch MEAN losses, not of per-sample losses.

For mini-batches B_1..B_M of ``batch_size`` samples (the authors: 10; the last one may be smaller):

    g_m = ∇_θ (1/|B_m|) Σ_{i∈B_m} ℓ_i,        F̃_j = (1/M) Σ_m g_{m,j}²

and then, per parameter tensor, the mean over its first axis (a weight (out, in, ...) becomes (in, ...), a bias
(out,) a scalar), as their script does before comparing Fishers. This is not the empirical Fisher
F_j = (1/N) Σ_i (∂ℓ_i/∂θ_j)²: the square of a batch mean keeps the cross terms between samples, so for a trained
network (per-sample gradients nearly cancelling on average) it is roughly F/|B| plus the squared mean gradient,
and the first-axis mean pools parameters. Their script also printed d² rather than d; fisherx reports d for every
estimator (which source is closest does not change under squaring).

``bootstrap=R`` resamples the mini-batches: F̃_r = Σ_m w_rm g_m² / Σ_m w_rm with w_rm ~ Poisson(1) a function of
(``bootstrap_seed``, m, r), so two such Fishers on the same data and batches are resampled alike (paired).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .bootstrap import MAX_REPLICATES, poisson_weights
from .result import FisherDiag

KIND = "minibatch_authors"
AUTHORS_BATCH = 10  # the batch size of the authors' script


def _chunks(data, batch_size: int):
    """(x, y) mini-batches of ``batch_size``: a pair (X, Y) is cut in order; every batch of an iterable is cut too."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"the input and target tensors have {x.shape[0]} and {y.shape[0]} samples")
        data = [(x, y)]
    elif isinstance(data, torch.Tensor) or not hasattr(data, "__iter__"):
        raise TypeError(
            "data must be a DataLoader, an iterable of (x, y) batches, or a pair (X, Y) of tensors; "
            f"got {type(data).__name__}"
        )
    for k, batch in enumerate(data):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"batch {k} is not an (x, y) pair (got {type(batch).__name__})")
        x, y = batch
        for s in range(0, x.shape[0], batch_size):
            yield x[s : s + batch_size], y[s : s + batch_size]


def _mean_loss(loss, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if loss == "cross_entropy":
        return torch.nn.functional.cross_entropy(out, y)
    if loss == "mse":
        if out.shape != y.shape:
            raise ValueError(
                f"loss='mse' needs targets shaped like the output {tuple(out.shape)}, got {tuple(y.shape)}"
            )
        return 0.5 * (out - y).square().reshape(out.shape[0], -1).sum(1).mean()
    val = loss(out, y)
    if not isinstance(val, torch.Tensor) or val.shape != (out.shape[0],):
        raise ValueError(f"a loss callable must return one value per sample, shape ({out.shape[0]},)")
    return val.mean()


def _check(model, loss, batch_size, max_samples, bootstrap) -> None:
    from .engine import LOSSES

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or not 0 <= bootstrap <= MAX_REPLICATES:
        raise ValueError(f"bootstrap must be an int replicate count in [0, {MAX_REPLICATES}], got {bootstrap!r}")


def _accumulate(model, batches, selected, loss, dev, acc, bootstrap, bootstrap_seed, max_samples):
    """acc[n][0] += g_m², acc[n][r] += w_rm·g_m² over the mini-batches; returns (samples, batches, Σ_m w_rm)."""
    from .engine import move_batch

    names = list(selected)
    wsum = torch.zeros(bootstrap, dtype=torch.float64)
    n_seen = m = 0
    for x, y in batches:
        if max_samples is not None:
            x, y = x[: max_samples - n_seen], y[: max_samples - n_seen]
        if x.shape[0] == 0:
            break
        x, y = move_batch(x, dev), move_batch(y, dev)
        grads = torch.autograd.grad(_mean_loss(loss, model(x), y), [selected[n] for n in names], allow_unused=True)
        w = torch.ones(1, dtype=torch.float64)
        if bootstrap:
            rw = poisson_weights(bootstrap_seed, m, 1, bootstrap)[:, 0]
            wsum += rw
            w = torch.cat([w, rw])
        for n, g in zip(names, grads, strict=True):
            if g is not None:
                sq = g.detach().square()
                acc[n] += w.to(device=sq.device, dtype=sq.dtype).reshape(-1, *[1] * sq.dim()) * sq
        n_seen += x.shape[0]
        m += 1
        if max_samples is not None and n_seen >= max_samples:
            break
    return n_seen, m, wsum


def fisher_minibatch(
    model: nn.Module,
    data,
    *,
    loss: str | Callable = "cross_entropy",
    batch_size: int = AUTHORS_BATCH,
    first_axis_mean: bool = True,
    max_samples: int | None = None,
    params=None,
    device=None,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
) -> FisherDiag:
    """The authors' code's estimator F̃_j = (1/M) Σ_m (∂ L̄_m/∂θ_j)², L̄_m the mean loss of mini-batch m of
    ``batch_size`` samples, then (``first_axis_mean``) the mean over every parameter's first axis.

    ``data``, ``loss``, ``params``, ``max_samples``, ``bootstrap``/``bootstrap_seed`` as in
    :func:`fisherx.fisher_diag` (the bootstrap resamples mini-batches, see the module docstring). BatchNorm uses
    running statistics (the model runs in eval mode; its flags are restored).
    """
    from .engine import model_device, select_params

    _check(model, loss, batch_size, max_samples, bootstrap)
    selected = select_params(model, params)
    dev = model_device(model, device)
    acc = {n: torch.zeros(1 + bootstrap, *p.shape, dtype=p.dtype, device=p.device) for n, p in selected.items()}
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        n_seen, m, wsum = _accumulate(
            model, _chunks(data, batch_size), selected, loss, dev, acc, bootstrap, bootstrap_seed, max_samples
        )
    finally:
        for mod, t in flags.items():
            mod.training = t
    if m == 0:
        raise ValueError("data is empty: fisher_minibatch saw no samples")
    if bootstrap and bool((wsum == 0).any()):
        raise ValueError(
            f"a bootstrap replicate drew weight 0 for all {m} mini-batches: too few batches for a "
            "bootstrap; pass more data or a different bootstrap_seed"
        )

    def reduce(t: torch.Tensor) -> torch.Tensor:  # t: (1 + R, *shape); the first axis of the parameter is dim 1
        return t.mean(dim=1) if first_axis_mean and t.dim() > 1 else t

    scale = torch.cat([torch.full((1,), float(m), dtype=torch.float64), wsum])
    out = {
        n: reduce(a / scale.to(device=a.device, dtype=a.dtype).reshape(-1, *[1] * (a.dim() - 1)))
        for n, a in acc.items()
    }
    meta = {
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "n_params": int(sum(p.numel() for p in selected.values())),
        "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__),
        "kind": KIND,
        "batch_size": batch_size,
        "n_batches": m,
        "first_axis_mean": bool(first_axis_mean),
        "dtype": str(next(iter(selected.values())).dtype).replace("torch.", ""),
    }
    if not bootstrap:
        return FisherDiag({n: a[0] for n, a in out.items()}, n_seen, meta)
    meta["bootstrap"] = {"replicates": bootstrap, "seed": bootstrap_seed, "weights": "poisson", "over": "batches"}
    return FisherDiag(
        {n: a[0] for n, a in out.items()},
        n_seen,
        meta,
        replicates={n: a[1:] for n, a in out.items()},
        replicate_weights=wsum,
    )
