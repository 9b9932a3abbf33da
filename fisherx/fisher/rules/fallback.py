"""Any other module: per-sample gradients of its parameters by ``torch.func`` (vmap of a vjp), a chunk at a time.

For sample i, ∂ℓ_i/∂θ = vjp(θ ↦ module(x_i; θ))(g_i): the module's own forward run on one sample (with a batch dim
of 1) and pulled back with that sample's output gradient. The (chunk × parameters) block of per-sample gradients
does exist here, bounded by :data:`CHUNK_BUDGET` elements. The same function gives per-use gradients for
parameters shared by several modules or calls (tied weights), which must be summed before squaring.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten

# Elements of per-sample gradients held at once (64 MiB in float32).
CHUNK_BUDGET = 1 << 24

_warned: set[str] = set()


def warn_once(module: nn.Module) -> None:
    """Warn once per module type that it has no rule and runs through the (slower) torch.func fallback."""
    name = f"{type(module).__module__}.{type(module).__qualname__}"
    if name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"fisherx.fisher_diag: no per-layer rule for {name}; its parameters use the chunked torch.func "
            "fallback (correct, but slower and holding a chunk of per-sample gradients). Register a rule with "
            "fisherx.fisher.register_rule to make it fast.",
            RuntimeWarning,
            stacklevel=3,
        )


def warn_external(model: nn.Module, names: list[str]) -> None:
    """Warn once per set of parameters that they need whole-model per-sample gradients (the slowest path)."""
    key = f"{type(model).__qualname__}:{','.join(names)}"
    if key in _warned:
        return
    _warned.add(key)
    mods = dict(model.named_modules())
    owners = sorted({type(mods[p.rpartition(".")[0]]).__qualname__ for p in names})
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    warnings.warn(
        f"fisherx.fisher_diag: {shown} (of {', '.join(owners)}) are used outside the module holding them, or in a "
        "module call whose outputs do not carry the batch along dim 0; they use whole-model torch.func per-sample "
        "gradients (correct, but slow and holding a chunk of per-sample gradients).",
        RuntimeWarning,
        stacklevel=4,
    )


def _batch_size(activations, backprops) -> int:
    return next(t for t in tree_flatten(backprops)[0] if t is not None).shape[0]


def chunk_size(params: dict) -> int:
    """Samples per chunk so that the per-sample gradients of ``params`` stay within CHUNK_BUDGET elements."""
    n = sum(p.numel() for p in params.values())
    return max(1, CHUNK_BUDGET // max(1, n))


def per_sample_grads(module: nn.Module, activations, backprops, params: dict, start: int, stop: int) -> dict:
    """{name: (stop − start, *shape)}: ∂ℓ_i/∂θ for samples start..stop of the parameters ``params`` (names relative
    to ``module``; any of its own or its descendants' parameters), from the module's inputs and output gradient."""
    from . import find_rule, hook

    cots = tree_flatten(backprops)[0]
    keep = [i for i, c in enumerate(cots) if isinstance(c, torch.Tensor)]
    batch_dims = hook(find_rule(module), "batch_dims") or (lambda m, ts: [0] * len(ts))
    dims = batch_dims(module, [cots[i] for i in keep])
    if any(dims):
        # Some output is not batched along dim 0 (an RNN's h_n): the rule is exact per call, but per-sample
        # gradients for a use shared with other calls are not available.
        raise NotImplementedError(
            f"fisher_diag: the parameters of {type(module).__name__} are used by several calls "
            "(tied weights or a layer applied twice); per-use gradients of this layer type "
            "are not supported"
        )
    bsz = _batch_size(activations, backprops)
    args = list(activations)
    kwargs = dict(getattr(activations, "kwargs", {}))

    def batched(t):
        return isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == bsz

    arg_dims = tuple(0 if batched(a) else None for a in args)
    kw_names = [k for k, v in kwargs.items() if batched(v)]
    kw_fixed = {k: v for k, v in kwargs.items() if k not in kw_names}
    detached = {k: v.detach() for k, v in params.items()}
    # Only the outputs that received a gradient enter the vjp (``keep``): None entries (attention weights not asked
    # for) and non-tensor leaves of a tuple output are left out of it.

    def one(arg_vals, kw_vals, cot):
        a1 = [a.unsqueeze(0) if d == 0 else a for a, d in zip(arg_vals, arg_dims, strict=True)]
        kw1 = dict(kw_fixed, **{k: v.unsqueeze(0) for k, v in zip(kw_names, kw_vals, strict=True)})

        def f(p):
            leaves = tree_flatten(functional_call(module, p, tuple(a1), kw1, strict=False))[0]
            return tuple(leaves[i] for i in keep)

        pull = vjp(f, detached)[1]
        return pull(tuple(c.unsqueeze(0) for c in cot))[0]

    sl = slice(start, stop)
    arg_vals = tuple(a[sl] if d == 0 else a for a, d in zip(args, arg_dims, strict=True))
    kw_vals = tuple(kwargs[k][sl] for k in kw_names)
    cot = tuple(cots[i][sl] for i in keep)
    return vmap(one, in_dims=(arg_dims, 0, 0))(arg_vals, kw_vals, cot)


def fallback_rule(layer: nn.Module, activations, backprops, params: dict | None = None, weights=None) -> dict:
    """Σ_i (∂ℓ_i/∂θ)² for ``params`` (default: the layer's own trainable parameters), chunk by chunk; with bootstrap
    ``weights`` (R, B) the (R, *shape) sums Σ_i w_ri·(∂ℓ_i/∂θ)² from the same chunk of per-sample gradients."""
    from . import batch_sum

    if params is None:
        params = {n: p for n, p in layer.named_parameters(recurse=False) if p.requires_grad}
    lead = () if weights is None else (weights.shape[0],)
    out = {n: torch.zeros(*lead, *p.shape, dtype=p.dtype, device=p.device) for n, p in params.items()}
    if not params:
        return out
    bsz = _batch_size(activations, backprops)
    step = chunk_size(params)
    for s in range(0, bsz, step):
        e = min(bsz, s + step)
        grads = per_sample_grads(layer, activations, backprops, params, s, e)
        for n in out:
            out[n] += batch_sum(grads[n].square(), None if weights is None else weights[:, s:e])
    return out
