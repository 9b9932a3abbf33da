"""The only caller of the compiled extension ``fisherx._C``.

Every op here checks its inputs (dtype, device, shape), allocates its outputs and workspaces with torch, picks the
backend (the C++ CPU kernel, the CUDA kernel, or the pure-PyTorch reference in :mod:`fisherx._reference` where no
compiled kernel can run) and is registered with :func:`torch.library.custom_op` plus a fake implementation, so it
works under ``torch.compile(fullgraph=True)``.

Kernels report per-row statistics (sum, negative count) from the same pass that computes the result, so bad
input is rejected with a message naming the tensor at no extra cost.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch

from . import _reference as ref

try:
    from . import _C  # type: ignore[attr-defined]  # the compiled extension (csrc/), which has no stub
except ImportError as exc:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "fisherx's compiled extension fisherx._C is missing or failed to load "
        f"({exc}). Build it with `pip install -e .` from the repository root."
    ) from exc

_FLOAT_DTYPES = (torch.float32, torch.float64)


def build_info() -> dict:
    """How the extension was built: version, CUDA on/off and architectures, OpenMP."""
    return dict(_C.build_info())


@functools.cache
def cuda_kernels_usable(device_index: int = 0) -> bool:
    """True when the compiled CUDA kernels can run on this device (compiled in, and the device accepts them)."""
    if not hasattr(_C, "cuda") or not torch.cuda.is_available():
        return False
    try:
        return _probe_cuda_kernels(device_index)
    except RuntimeError as exc:
        warnings.warn(
            f"fisherx: the CUDA kernels of this build cannot run on {torch.cuda.get_device_name(device_index)} "
            f"({exc}); falling back to the PyTorch reference ops. Rebuild with FISHERX_CUDA_ARCHS set for this GPU.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False


def _probe_cuda_kernels(device_index: int) -> bool:
    """A tiny real launch: an architecture the build lacks, or a driver too old, fails here, not mid-job."""
    with torch.cuda.device(device_index):
        x = torch.ones(1, 3, device="cuda", dtype=torch.float32)
        stats = _row_stats_kernel(x, "cuda")
        torch.cuda.synchronize()
        return bool(stats[0, 0].item() == 3.0)


def _backend(t: torch.Tensor) -> str:
    if t.device.type == "cpu":
        return "cpu"
    if t.device.type == "cuda" and cuda_kernels_usable(t.device.index or 0):
        return "cuda"
    return "reference"


def _launch(kernel: str, backend: str, device: torch.device, args: tuple, *, workspace=None, tail: tuple = ()):
    """The one backend dispatch of the compiled kernels. Both submodules of ``_C`` take the same leading
    ``args``; the CPU kernel then takes the thread count, the CUDA kernel its workspace (``workspace()``, allocated
    only on CUDA, when the kernel needs one) and the current stream of ``device``; ``tail`` (the bootstrap
    weights) comes last on both."""
    if backend == "cpu":
        getattr(_C.cpu, kernel)(*args, torch.get_num_threads(), *tail)
        return
    with torch.cuda.device(device):
        ws = () if workspace is None else (workspace().data_ptr(),)
        getattr(_C.cuda, kernel)(*args, *ws, _stream(device), *tail)


def _check_float(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")


def check_column(sources: torch.Tensor, target: torch.Tensor, src_name: str, tgt_name: str) -> None:
    _check_float(sources, src_name)
    _check_float(target, tgt_name)
    if sources.dim() != 2 or target.dim() != 1:
        raise ValueError(
            f"expected {src_name} of shape (K, n) and {tgt_name} of shape (n,), "
            f"got {tuple(sources.shape)} and {tuple(target.shape)}"
        )
    if sources.shape[1] != target.shape[0]:
        raise ValueError(
            f"length mismatch: {src_name} has {sources.shape[1]} entries per row, {tgt_name} has {target.shape[0]}"
        )
    if sources.device != target.device:
        raise ValueError(f"{src_name} is on {sources.device} but {tgt_name} is on {target.device}")
    if sources.dtype != target.dtype:
        raise TypeError(f"{src_name} is {sources.dtype} but {tgt_name} is {target.dtype}; convert one of them")


def check_sources(sources: Sources, target: torch.Tensor, src_name: str, tgt_name: str) -> None:
    """check_column for a (K, n) tensor or a list of K (n,) tensors (each named by its own line of ``src_name``)."""
    if isinstance(sources, torch.Tensor):
        check_column(sources, target, src_name, tgt_name)
        return
    for row, name in zip(sources, _row_names(src_name, len(sources)), strict=True):
        _check_float(row, name)
        _check_float(target, tgt_name)
        if row.dim() != 1:
            raise ValueError(f"expected {name} of shape (n,), got {tuple(row.shape)}")
        check_column(row[None], target, name, tgt_name)


def _row_names(src_name: str, k: int) -> list[str]:
    """Names of the K source rows for error messages: K names joined by newlines, or one name indexed per row."""
    names = src_name.split("\n")
    if len(names) == k:
        return names
    return [src_name] if k == 1 else [f"{src_name}[{i}]" for i in range(k)]


def _raise_on_bad_rows(stats: torch.Tensor, names: list[str], need_positive_trace: bool = True) -> None:
    """Raise ValueError naming the first tensor whose statistics show NaN/Inf, negatives or a zero trace."""
    s = stats.detach().cpu()
    for i, name in enumerate(names):
        total, neg = float(s[i, 0]), int(s[i, 1])
        if not torch.isfinite(s[i, 0]):
            raise ValueError(f"{name} contains NaN or Inf")
        if neg:
            raise ValueError(f"{name} has {neg} negative entries; a Fisher diagonal is non-negative")
        if need_positive_trace and total <= 0.0:
            raise ValueError(f"{name} has zero trace, so its unit-trace normalisation is undefined")


# The K source rows of a distance kernel: one (K, n) tensor, or a list of K (n,) tensors read in place.
Sources = torch.Tensor | list[torch.Tensor]


def _num_rows(sources: Sources) -> int:
    return sources.shape[0] if isinstance(sources, torch.Tensor) else len(sources)


def _rows(sources: Sources, device: torch.device) -> tuple[tuple[int, int, int, int, int], list[torch.Tensor]]:
    """The kernels' (address, rows, row stride, element stride, table address) of ``sources``, and the tensors
    that must stay alive until the launch. A list is passed as a table of its rows' addresses (on ``device``),
    so K separate Fishers are read where they are instead of being stacked into a (K, n) copy first; the rows
    share one element stride (when their strides differ, the rows that are not contiguous are copied)."""
    if isinstance(sources, torch.Tensor):
        return (sources.data_ptr(), sources.shape[0], sources.stride(0), sources.stride(1), 0), []
    if not sources:
        return (0, 0, 0, 1, 0), []
    n = sources[0].shape[0]
    rows, stride = sources, sources[0].stride(0) if n > 1 else 1
    if n > 1 and any(r.stride(0) != stride for r in rows):
        rows, stride = [r.contiguous() for r in rows], 1  # copies only the rows that are not contiguous
    table = torch.tensor([r.data_ptr() for r in rows], dtype=torch.int64).to(device)
    return (rows[0].data_ptr(), len(rows), 0, stride, table.data_ptr()), [table, *rows]


def _stacked(sources: Sources, target: torch.Tensor) -> torch.Tensor:
    """``sources`` as one (K, n) tensor (the reference path; a list is copied)."""
    if isinstance(sources, torch.Tensor):
        return sources
    return torch.stack(sources) if sources else target.new_empty((0, target.shape[0]))


def _dtype_name(t: torch.Tensor) -> str:
    return "float32" if t.dtype == torch.float32 else "float64"


def _workspace(k: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.empty(_C.cuda.workspace_doubles(k, n), dtype=torch.float64, device=device)


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


# ----------------------------------------------------------------------------------------------------------------
# row_stats: the trace (and negative count) of every row in one pass


def _row_stats_kernel(x: Sources, backend: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """(rows, 2) statistics of a (rows, n) tensor or of a list of (n,) tensors (then ``like`` is one of them)."""
    like = x if isinstance(x, torch.Tensor) else like
    assert like is not None
    k, n = _num_rows(x), like.shape[-1]
    stats = torch.empty(k, 2, dtype=torch.float64, device=like.device)
    if k == 0:
        return stats
    if backend == "reference":
        return stats.copy_(ref.row_stats(_stacked(x, like)))
    rows, keep = _rows(x, like.device)
    args = (_dtype_name(like), rows[0], k, n, *rows[2:], stats.data_ptr())
    _launch("row_stats", backend, like.device, args, workspace=lambda: _workspace(k, n, like.device))
    del keep
    return stats


@torch.library.custom_op("fisherx::row_stats", mutates_args=())
def row_stats(x: torch.Tensor) -> torch.Tensor:
    """(rows, 2) float64 statistics of a 2-D tensor: column 0 the row sums (traces), column 1 negative counts."""
    _check_float(x, "x")
    if x.dim() != 2:
        raise ValueError(f"row_stats expects a 2-D tensor, got shape {tuple(x.shape)}")
    return _row_stats_kernel(x, _backend(x))


@row_stats.register_fake
def _(x):
    return x.new_empty((x.shape[0], 2), dtype=torch.float64)


def trace(x: torch.Tensor) -> torch.Tensor:
    """Σ_j x_j of any float tensor, accumulated in float64 (0-dim float64 tensor)."""
    _check_float(x, "x")
    return row_stats(x.reshape(1, -1))[0, 0]


# ----------------------------------------------------------------------------------------------------------------
# Distances of K source rows against one target, in one launch


def _checked_column(
    kernel: str, reference, sources: Sources, target: torch.Tensor, source_name: str, target_name: str
) -> torch.Tensor:
    """Run the column kernel ``kernel`` (ftd_column, cosine_column), whose pass also yields every row's statistics,
    and reject bad input by name; the PyTorch ``reference`` where no compiled kernel can run."""
    check_sources(sources, target, source_name, target_name)
    k, n = _num_rows(sources), target.shape[0]
    names = _row_names(source_name, k) + [target_name]
    backend = _backend(target)
    if backend == "reference":
        stacked = _stacked(sources, target)
        _raise_on_bad_rows(torch.cat([ref.row_stats(stacked), ref.row_stats(target[None])]), names)
        return reference(stacked, target)
    out = torch.empty(k, dtype=torch.float64, device=target.device)
    stats = torch.empty(k + 1, 2, dtype=torch.float64, device=target.device)
    rows, keep = _rows(sources, target.device)
    args = (
        _dtype_name(target),
        rows[0],
        k,
        n,
        *rows[2:],
        target.data_ptr(),
        target.stride(0),
        out.data_ptr(),
        stats.data_ptr(),
    )
    _launch(kernel, backend, target.device, args, workspace=lambda: _workspace(k, n, target.device))
    del keep  # the address table and copied rows, alive until the launch
    _raise_on_bad_rows(stats, names)
    return out


def _ftd_column(sources: Sources, target: torch.Tensor, source_name: str, target_name: str) -> torch.Tensor:
    return _checked_column("ftd_column", ref.ftd_column, sources, target, source_name, target_name)


def _cosine_column(sources: Sources, target: torch.Tensor, source_name: str, target_name: str) -> torch.Tensor:
    return _checked_column("cosine_column", ref.cosine_column, sources, target, source_name, target_name)


def _logdet_column(
    sources: Sources, target: torch.Tensor, sigma2: float, normalize: bool, source_name: str, target_name: str
) -> torch.Tensor:
    check_sources(sources, target, source_name, target_name)
    if not 0.0 < sigma2 < math.inf:
        raise ValueError(f"sigma2 must be positive and finite, got {sigma2}")
    k, n = _num_rows(sources), target.shape[0]
    backend = _backend(target)
    stats = torch.cat([_row_stats_kernel(sources, backend, target), _row_stats_kernel(target[None], backend)])
    _raise_on_bad_rows(stats, _row_names(source_name, k) + [target_name], need_positive_trace=normalize)
    if backend == "reference" or n == 0:
        return ref.logdet_column(_stacked(sources, target), target, sigma2, normalize)
    scale = (1.0 / stats[:, 0]) if normalize else torch.ones(k + 1, dtype=torch.float64, device=target.device)
    out = torch.empty(k, dtype=torch.float64, device=target.device)
    rows, keep = _rows(sources, target.device)
    # scale holds the K sources' factors then the target's (its last entry), on the sources' device.
    args = (_dtype_name(target), rows[0], k, n, *rows[2:], target.data_ptr(), target.stride(0), scale.data_ptr())
    _launch(
        "logdet_column",
        backend,
        target.device,
        (*args, sigma2, out.data_ptr()),
        workspace=lambda: _workspace(k, n, target.device),
    )
    del keep
    return out


# The column kernels on a list of K (n,) tensors read in place (no stacking copy), without autograd: for callers
# that hold separate Fishers and need no gradient (fisherx.distance_column picks this path when it can).
in_place = {"ftd_column": _ftd_column, "cosine_column": _cosine_column, "logdet_column": _logdet_column}


@torch.library.custom_op("fisherx::ftd_column", mutates_args=())
def ftd_column(sources: torch.Tensor, target: torch.Tensor, source_name: str, target_name: str) -> torch.Tensor:
    """FTD of every row of ``sources`` (K, n) against ``target`` (n,): (K,) float64.

    d_k = (1/√2)·‖√F̂_k − √F̂_target‖₂, with F̂ = F / tr(F).
    """
    return _ftd_column(sources, target, source_name, target_name)


@ftd_column.register_fake
def _(sources, target, source_name, target_name):
    return sources.new_empty((sources.shape[0],), dtype=torch.float64)


@torch.library.custom_op("fisherx::logdet_column", mutates_args=())
def logdet_column(
    sources: torch.Tensor, target: torch.Tensor, sigma2: float, normalize: bool, source_name: str, target_name: str
) -> torch.Tensor:
    """Log-determinant distance of every source row against the target: (K,) float64.

    d_k = (1/n)·|Σ_j log((a_kj + σ²)/(b_j + σ²))|, on unit-trace vectors when ``normalize``.
    """
    return _logdet_column(sources, target, sigma2, normalize, source_name, target_name)


@logdet_column.register_fake
def _(sources, target, sigma2, normalize, source_name, target_name):
    return sources.new_empty((sources.shape[0],), dtype=torch.float64)


@torch.library.custom_op("fisherx::cosine_column", mutates_args=())
def cosine_column(sources: torch.Tensor, target: torch.Tensor, source_name: str, target_name: str) -> torch.Tensor:
    """Cosine similarity Σ_j a_kj·b_j / (‖a_k‖·‖b‖) of every source row against the target: (K,) float64."""
    return _cosine_column(sources, target, source_name, target_name)


@cosine_column.register_fake
def _(sources, target, source_name, target_name):
    return sources.new_empty((sources.shape[0],), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# Autograd: analytic backward formulas of the distance ops, in plain float64 PyTorch (so they are differentiable
# again: double backward and torch.func.grad(grad(...)) work). Each recomputes what it needs from the saved inputs.


def _grad_like(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return g.to(like.dtype)


def _row_stats_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    # Column 0 is the row sum (∂/∂x = 1); column 1 counts negatives, a step function (derivative 0).
    return _grad_like(grad[:, :1].expand(x.shape[0], x.shape[1]), x)


def _ftd_partials(a: torch.Tensor, b: torch.Tensor, d_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∂d_k/∂a_kj (K, n) and ∂d_k/∂b_j (K, n) of d_k = (1/√2)·‖√(a_k/A_k) − √(b/B)‖ (float64 inputs).

    With u = √(a/A), v = √(b/B) and d² = 1 − Σ uv:  ∂d/∂a_j = ((u_j − v_j)/u_j − d²) / (4·A·d), the same with a and b
    (u and v, A and B) swapped for ∂d/∂b_j; written with u − v, not v/u − 1, so tiny distances do not cancel.
    Subgradients where d is not differentiable:
    - d = 0 (a ∝ b, d's minimum; ``d_out``, the forward's result, is 0): 0.
    - a_j = 0 = b_j: (u_j − v_j)/u_j := 1, the exact limit (√(a_j·b_j) ≡ 0, only the trace depends on a_j).
    - a_j = 0 < b_j: the derivative is −∞ (the boundary of the domain); 0 is returned instead, so a chain rule
      through a Fisher entry that is identically zero (a dead parameter) stays finite. Likewise for b_j = 0 < a_j.
    """
    A = a.sum(dim=1, keepdim=True)
    B = b.sum()
    u = (a / A).sqrt()
    v = (b / B).sqrt().expand_as(u)
    diff = u - v
    d2 = 0.5 * diff.square().sum(dim=1, keepdim=True)
    d = d2.sqrt()
    live = (d > 0) & (d_out[:, None] > 0)
    d_safe = torch.where(live, d, torch.ones_like(d))

    def one_side(x: torch.Tensor, y: torch.Tensor, dxy: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        pos = x > 0
        ratio = torch.where(pos, dxy / torch.where(pos, x, torch.ones_like(x)), torch.ones_like(x))
        g = (ratio - d2) / (4.0 * total * d_safe)
        return torch.where(live & (pos | (y == 0)), g, torch.zeros_like(g))

    return one_side(u, v, diff, A), one_side(v, u, -diff, B)


def _ftd_backward(ctx, grad):
    sources, target, d_out = ctx.saved_tensors
    da, db = _ftd_partials(sources.to(torch.float64), target.to(torch.float64), d_out.detach())
    g = grad.to(torch.float64)[:, None]
    return _grad_like(g * da, sources), _grad_like((g * db).sum(dim=0), target), None, None


def _logdet_backward(ctx, grad):
    """d_k = |L_k|/n with L_k = Σ_j log(â_kj + σ²) − log(b̂_j + σ²); ∂d/∂a = sign(L)/n·∂L/∂a (sign(0) = 0: the
    subgradient 0 at d = 0). Raw: ∂L/∂a_j = 1/(a_j + σ²); unit-trace (â = a/A): (w_j − Σ_i â_i·w_i)/A with
    w = 1/(â + σ²). The target enters with the opposite sign."""
    sources, target = ctx.saved_tensors
    a, b = sources.to(torch.float64), target.to(torch.float64)[None]
    n = a.shape[1]

    def dlog(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not ctx.normalize:
            return (x + ctx.sigma2).log().sum(dim=1), 1.0 / (x + ctx.sigma2)
        total = x.sum(dim=1, keepdim=True)
        xh = x / total
        w = 1.0 / (xh + ctx.sigma2)
        return (xh + ctx.sigma2).log().sum(dim=1), (w - (xh * w).sum(dim=1, keepdim=True)) / total

    la, ga = dlog(a)
    lb, gb = dlog(b)
    coef = (grad.to(torch.float64) * torch.sign(la - lb) / max(n, 1))[:, None]
    return _grad_like(coef * ga, sources), _grad_like(-(coef * gb).sum(dim=0), target), None, None, None, None


def _cosine_backward(ctx, grad):
    """c = a·b/(‖a‖‖b‖): ∂c/∂a = b/(‖a‖‖b‖) − c·a/‖a‖², and the same with a and b swapped."""
    sources, target = ctx.saved_tensors
    a, b = sources.to(torch.float64), target.to(torch.float64)
    na, nb = a.norm(dim=1, keepdim=True), b.norm()
    c = (a @ b)[:, None] / (na * nb)
    g = grad.to(torch.float64)[:, None]
    da = b[None] / (na * nb) - c * a / na.square()
    db = a / (na * nb) - c * b[None] / nb.square()
    return _grad_like(g * da, sources), _grad_like((g * db).sum(dim=0), target), None, None


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:2])


def _save_inputs_output(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:2], output)


def _save_logdet(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:2])
    ctx.sigma2, ctx.normalize = float(inputs[2]), bool(inputs[3])


def _save_x(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _differentiable(op, backward, setup_context):
    """Register ``backward`` as the op's autograd formula, and return the op wrapped in an autograd.Function with
    the same formula: torch's custom-op autograd does not support torch.func transforms (grad, jacrev), an
    autograd.Function with a setup_context does. The public distances call the wrapper."""
    torch.library.register_autograd(op, backward, setup_context=setup_context)
    fn: Any = type(  # an autograd.Function subclass: mypy cannot see .apply on a type() result
        f"{op._name}_fn",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(lambda *args: op(*args)),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
        },
    )

    def call(*args):
        # Under torch.compile the op itself, whose registered formula AOTAutograd traces (dynamo cannot trace the
        # generic wrapper); eagerly the wrapper, so torch.func transforms work.
        return op(*args) if torch.compiler.is_compiling() else fn.apply(*args)

    call.__name__ = call.__qualname__ = op._name
    return call


# The differentiable forms of the ops (same arguments): use these where gradients or torch.func may be needed.
differentiable = {
    "row_stats": _differentiable(row_stats, _row_stats_backward, _save_x),
    "ftd_column": _differentiable(ftd_column, _ftd_backward, _save_inputs_output),
    "logdet_column": _differentiable(logdet_column, _logdet_backward, _save_logdet),
    "cosine_column": _differentiable(cosine_column, _cosine_backward, _save_inputs),
}


# ----------------------------------------------------------------------------------------------------------------
# Fisher engine: per-sample squared-gradient sums (csrc/cpu/sqgrad.*, csrc/cuda/sqgrad.*; used by fisherx/fisher)


def _check_same(tensors: dict, op: str) -> None:
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        _check_float(t, name)
        if t.dtype != first.dtype:
            raise TypeError(f"{op}: {name} is {t.dtype} but {first_name} is {first.dtype}")
        if t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}")


def _check_sqgrad_gemm(g: torch.Tensor, u: torch.Tensor) -> None:
    _check_same({"g": g, "u": u}, "sqgrad_gemm")
    if g.dim() != 4 or u.dim() != 4 or g.shape[:3] != u.shape[:3]:
        raise ValueError(
            "sqgrad_gemm expects g of shape (B, C, P, M) and u of shape (B, C, P, K) with the same B, C, P; "
            f"got {tuple(g.shape)} and {tuple(u.shape)}"
        )


def _check_weights(weights, g: torch.Tensor, op: str) -> tuple:
    """Validate bootstrap weights (R, B) against g (batch first); return the kernel arguments (addr, R, strides),
    (0, -1, 0, 0) when there are none."""
    if weights is None:
        return (0, -1, 0, 0)
    _check_same({"g": g, "weights": weights}, op)
    if weights.dim() != 2 or weights.shape[1] != g.shape[0]:
        raise ValueError(
            f"{op}: weights must have shape (R, B) with B = {g.shape[0]} samples, got {tuple(weights.shape)}"
        )
    return (weights.data_ptr(), weights.shape[0], weights.stride(0), weights.stride(1))


def _rep_shape(weights, shape) -> tuple:
    """The output shape: ``shape``, with a leading replicate dim R when bootstrap weights are given."""
    return tuple(shape) if weights is None else (weights.shape[0], *shape)


@torch.library.custom_op("fisherx::sqgrad_gemm", mutates_args=())
def sqgrad_gemm(g: torch.Tensor, u: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """out[c,m,k] = Σ_b (Σ_p g[b,c,p,m]·u[b,c,p,k])²: (C, M, K), the dtype of the inputs.

    The summed squared per-sample gradient of a weight used at P positions (Linear on sequences; convolutions
    after im2col, C = groups). The per-sample products g_bᵀu_b never reach memory: each is squared and summed
    over the batch in registers (CPU micro-kernel) or registers/shared memory (CUDA). Any strides are accepted.

    ``weights`` (R, B), the in-pass bootstrap: out[r,c,m,k] = Σ_b w[r,b]·(Σ_p g·u)², shape (R, C, M, K), all R
    replicates from the same pass over g and u (each per-sample tile is weighted R times while in cache).
    """
    _check_sqgrad_gemm(g, u)
    wargs = _check_weights(weights, g, "sqgrad_gemm")
    b, c, p, m = g.shape
    k = u.shape[3]
    backend = _backend(g)
    if backend == "reference":
        return ref.sqgrad_gemm(g, u, weights)
    out = torch.empty(_rep_shape(weights, (c, m, k)), dtype=g.dtype, device=g.device)
    args = (
        _dtype_name(g),
        g.data_ptr(),
        list(g.shape),
        list(g.stride()),
        u.data_ptr(),
        list(u.shape),
        list(u.stride()),
        out.data_ptr(),
        False,
    )
    _launch(
        "sqgrad_gemm",
        backend,
        g.device,
        args,
        tail=wargs,
        workspace=lambda: torch.empty(_C.cuda.sqgrad_gemm_workspace(b, c, m, k), dtype=g.dtype, device=g.device),
    )
    return out


@sqgrad_gemm.register_fake
def _(g, u, weights=None):
    return g.new_empty(_rep_shape(weights, (g.shape[1], g.shape[3], u.shape[3])))


@torch.library.custom_op("fisherx::sqgrad_norm", mutates_args=())
def sqgrad_norm(
    g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(2, C): row 0 Σ_b (Σ_p g·(x − mean)·rstd)², row 1 Σ_b (Σ_p g)²; inputs (B, P, C), mean/rstd may be broadcast.

    The summed squared per-sample gradients of a normalisation layer's weight (row 0) and bias (row 1) in one
    fused pass; x̂ = (x − mean)·rstd is formed on the fly, never stored. Per-sample sums are kept in float64.
    ``weights`` (R, B): (R, 2, C) bootstrap sums Σ_b w[r,b]·(per-sample sum)², from the same per-sample sums.
    """
    _check_same({"g": g, "x": x, "mean": mean, "rstd": rstd}, "sqgrad_norm")
    if g.dim() != 3 or any(t.shape != g.shape for t in (x, mean, rstd)):
        raise ValueError(
            "sqgrad_norm expects g, x, mean and rstd of one shape (B, P, C) (expand mean and rstd); got "
            f"{tuple(g.shape)}, {tuple(x.shape)}, {tuple(mean.shape)}, {tuple(rstd.shape)}"
        )
    wargs = _check_weights(weights, g, "sqgrad_norm")
    b, _, c = g.shape
    backend = _backend(g)
    if backend == "reference":
        return ref.sqgrad_norm(g, x, mean, rstd, weights)
    out = torch.empty(_rep_shape(weights, (2, c)), dtype=g.dtype, device=g.device)
    ws = torch.empty(max(1, b * 2 * c), dtype=torch.float64, device=g.device)
    args = (
        _dtype_name(g),
        list(g.shape),
        g.data_ptr(),
        list(g.stride()),
        x.data_ptr(),
        list(x.stride()),
        mean.data_ptr(),
        list(mean.stride()),
        rstd.data_ptr(),
        list(rstd.stride()),
        out.data_ptr(),
        ws.data_ptr(),
    )
    _launch("sqgrad_norm", backend, g.device, args, tail=wargs)
    return out


@sqgrad_norm.register_fake
def _(g, x, mean, rstd, weights=None):
    return g.new_empty(_rep_shape(weights, (2, g.shape[2])))


def _conv_geometry(x: torch.Tensor, kernel_size, stride, padding, dilation, out_size):
    """Sizes/strides of x and the geometry padded to 3 spatial dims, as the kernels take them."""
    n = x.dim() - 2
    fill = 3 - n
    size = list(x.shape) + [1] * fill
    strides = list(x.stride()) + [1] * fill
    ext = lambda v, one: list(v) + [one] * fill  # noqa: E731
    return size, strides, ext(out_size, 1), ext(kernel_size, 1), ext(stride, 1), ext(padding, 0), ext(dilation, 1)


@torch.library.custom_op("fisherx::sqgrad_conv", mutates_args=())
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
    """Σ_b (∂ℓ_b/∂W)² for a zero-padded Conv1d/2d/3d: (groups, O/groups, C/groups·prod(kernel_size)).
    With ``weights`` (R, B): (R, groups, O/groups, ...) bootstrap sums Σ_b w[r,b]·(∂ℓ_b/∂W)², in the same pass.

    ∂ℓ_b/∂W (per group) = G_bᵀU_b with U_b the im2col of sample b; the kernels read U straight from ``x``
    (implicit im2col: no unfolded copy) and square each per-sample tile in registers before summing over b.
    ``g`` is the output gradient (B, O, *out), ``x`` the input (B, C, *in); ``padding`` the leading zero padding
    per dim (the trailing side follows from the output size).
    """
    _check_same({"g": g, "x": x}, "sqgrad_conv")
    n = len(kernel_size)
    if not 1 <= n <= 3 or x.dim() != n + 2 or g.dim() != n + 2 or g.shape[0] != x.shape[0]:
        raise ValueError(
            f"sqgrad_conv expects g (B, O, *out) and x (B, C, *in) with {n} spatial dims and the same "
            f"B; got {tuple(g.shape)} and {tuple(x.shape)}"
        )
    if not all(len(v) == n for v in (stride, padding, dilation)):
        raise ValueError("sqgrad_conv: kernel_size, stride, padding and dilation need one entry per spatial dim")
    if groups < 1 or x.shape[1] % groups or g.shape[1] % groups:
        raise ValueError(f"sqgrad_conv: groups={groups} must divide the channels {x.shape[1]} and {g.shape[1]}")
    wargs = _check_weights(weights, g, "sqgrad_conv")
    backend = _backend(g)
    if backend == "reference":
        return ref.sqgrad_conv(g, x, kernel_size, stride, padding, dilation, groups, weights)
    b, o = g.shape[:2]
    kvol = 1
    for k in kernel_size:
        kvol *= k
    kdim = x.shape[1] // groups * kvol
    out = torch.empty(_rep_shape(weights, (groups, o // groups, kdim)), dtype=g.dtype, device=g.device)
    p = 1
    for v in g.shape[2:]:
        p *= v
    gv = g.reshape(b, groups, o // groups, p).transpose(2, 3)  # (B, groups, P, O/groups), a view
    geo = _conv_geometry(x, kernel_size, stride, padding, dilation, g.shape[2:])
    args = (
        _dtype_name(g),
        gv.data_ptr(),
        list(gv.shape),
        list(gv.stride()),
        x.data_ptr(),
        *geo,
        groups,
        out.data_ptr(),
    )
    _launch(
        "sqgrad_conv",
        backend,
        g.device,
        args,
        tail=wargs,
        workspace=lambda: torch.empty(
            _C.cuda.sqgrad_gemm_workspace(b, groups, o // groups, kdim), dtype=g.dtype, device=g.device
        ),
    )
    return out


@sqgrad_conv.register_fake
def _(g, x, kernel_size, stride, padding, dilation, groups, weights=None):
    kvol = 1
    for k in kernel_size:
        kvol *= k
    return g.new_empty(_rep_shape(weights, (groups, g.shape[1] // groups, x.shape[1] // groups * kvol)))
