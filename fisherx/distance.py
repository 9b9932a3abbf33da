"""Distances between Fisher diagonals: Fisher Task Distance (FTD), log-determinant distance, cosine similarity.

All three accept flat tensors or Fisher results (anything with ``.flat()`` and a name → tensor mapping, such as
:class:`fisherx.FisherDiag`); two Fisher results must cover the same parameters with the same shapes. The
reductions run in the fused kernels of :mod:`fisherx._ops` with float64 accumulation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from . import _ops
from . import _reference as ref
from ._registry import Registry

DEFAULT_SIGMA2 = 1e-8

FisherLike = torch.Tensor | Mapping


@dataclass(frozen=True)
class Metric:
    """One entry of the metric table :data:`METRICS` (look-ups instead of ``if metric == "cosine"`` branches).

    Fields:
    - ``name``: the string users pass as ``metric=``.
    - ``column``: ``column(sources (K, n), target (n,), sigma2, normalize, source_name, target_name) -> (K,)``
      float64, the K values against one target; it checks its input and names the bad tensor by
      ``source_name`` (K names joined by newlines) / ``target_name``. Differentiable where the metric is.
    - ``kind``: ``"distance"`` (smaller = closer; the closest task is the argmin) or ``"similarity"`` (larger =
      closer; argmax).
    - ``self_value``: the value of a Fisher against itself (0 for a distance, 1 for cosine).
    - ``range``: (low, high) of the values (``math.inf`` where unbounded).
    - ``reference``: the pure-PyTorch ``reference(sources, target, sigma2, normalize)`` the kernel is tested
      against.
    - ``uses_sigma2``: whether ``sigma2`` changes the value (recorded in results only then).
    - ``label``: how tables and figures name it ("FTD"); the name when empty.
    - ``column_in_place``: optionally the same column over a list of K (n,) tensors, read where they are (no
      stacking copy), for inputs that need no gradient; :func:`distance_column` uses it when it can.
    """

    name: str
    column: Callable[..., torch.Tensor]
    kind: str
    self_value: float
    range: tuple[float, float]
    reference: Callable[..., torch.Tensor]
    uses_sigma2: bool = False
    label: str = ""
    column_in_place: Callable[..., torch.Tensor] | None = None

    def __post_init__(self):
        if self.kind not in ("distance", "similarity"):
            raise ValueError(f"metric {self.name!r}: kind must be 'distance' or 'similarity', got {self.kind!r}")

    @property
    def closest(self):
        """``torch.argmin`` for a distance, ``torch.argmax`` for a similarity."""
        return torch.argmin if self.kind == "distance" else torch.argmax


# name -> Metric. Iterating, ``in`` and ``", ".join(METRICS)`` give the metric names.
METRICS: Registry[str, Metric] = Registry("metric")


def register_metric(metric: Metric, replace: bool = False) -> Metric:
    """Add ``metric`` to :data:`METRICS`, so ``distance``/``distance_column``/task distances accept its name."""
    return METRICS.register(metric.name, metric, replace=replace)


def get_metric(name: str) -> Metric:
    """The table entry of ``name``; ValueError naming the known metrics otherwise."""
    return METRICS.lookup(name)


def _two_arg(op: Callable[..., torch.Tensor]):
    def column(rows, target, sigma2, normalize, source_name, target_name):
        return op(rows, target, source_name, target_name)

    return column


def _logdet(op: Callable[..., torch.Tensor]):
    def column(rows, target, sigma2, normalize, source_name, target_name):
        return op(rows, target, float(sigma2), bool(normalize), source_name, target_name)

    return column


def _builtin_columns(op_name: str, adapt) -> dict:
    """The differentiable (K, n) column of the op and its in-place list form, adapted to Metric's signature."""
    return {
        "column": adapt(_ops.differentiable[op_name]),
        "column_in_place": adapt(_ops.in_place[op_name]),
    }


def _two_arg_reference(reference):
    return lambda s, t, sigma2, normalize: reference(s, t)


_INF = float("inf")
for _builtin in (
    Metric(
        "ftd",
        kind="distance",
        self_value=0.0,
        range=(0.0, 1.0),
        reference=_two_arg_reference(ref.ftd_column),
        label="FTD",
        **_builtin_columns("ftd_column", _two_arg),
    ),
    Metric(
        "logdet",
        kind="distance",
        self_value=0.0,
        range=(0.0, _INF),
        reference=ref.logdet_column,
        uses_sigma2=True,
        label="log-det distance",
        **_builtin_columns("logdet_column", _logdet),
    ),
    Metric(
        "cosine",
        kind="similarity",
        self_value=1.0,
        range=(0.0, 1.0),
        reference=_two_arg_reference(ref.cosine_column),
        label="cosine similarity",
        **_builtin_columns("cosine_column", _two_arg),
    ),
):
    register_metric(_builtin)
del _builtin


def _layout(f: Mapping) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in f.items()]


def check_same_layout(a: Mapping, b: Mapping, name_a: str, name_b: str) -> None:
    """Raise ValueError unless the mappings ``a`` and ``b`` (parameter name → tensor, e.g. two FisherDiag results)
    hold the same names, in the same order, with the same shapes; the message lists what differs, naming the
    two arguments by ``name_a``/``name_b``."""
    la, lb = dict(_layout(a)), dict(_layout(b))
    if la == lb and list(la) == list(lb):
        return
    only_a = [n for n in la if n not in lb]
    only_b = [n for n in lb if n not in la]
    shape = [f"{n}: {la[n]} vs {lb[n]}" for n in la if n in lb and la[n] != lb[n]]
    parts = []
    if only_a:
        parts.append(f"only in {name_a}: {', '.join(only_a[:5])}{' ...' if len(only_a) > 5 else ''}")
    if only_b:
        parts.append(f"only in {name_b}: {', '.join(only_b[:5])}{' ...' if len(only_b) > 5 else ''}")
    if shape:
        parts.append(f"shape mismatch {'; '.join(shape[:5])}")
    if not parts:
        parts.append("the parameters are in a different order")
    raise ValueError(f"{name_a} and {name_b} do not cover the same parameters: {'; '.join(parts)}")


def _flat(f: FisherLike, name: str) -> torch.Tensor:
    if isinstance(f, torch.Tensor):
        if f.dim() == 0:
            raise ValueError(f"{name} is a 0-dim tensor; a Fisher diagonal has one entry per parameter")
        return f.reshape(-1) if f.dim() != 1 else f
    if hasattr(f, "flat"):
        return f.flat()
    if isinstance(f, Mapping):
        return torch.cat([t.reshape(-1) for t in f.values()])
    raise TypeError(f"{name} must be a tensor or a Fisher result, got {type(f).__name__}")


def _aligned(sources: Sequence[FisherLike], target: FisherLike, names: Sequence[str], target_name: str):
    for s, n in zip(sources, names, strict=True):
        if isinstance(s, Mapping) and isinstance(target, Mapping):
            check_same_layout(s, target, n, target_name)
        # Parameter-shaped tensors are flattened, so (2, 3) against (3, 2) would silently pair the wrong entries:
        # shapes must agree unless one side is already flat.
        if (
            isinstance(s, torch.Tensor)
            and isinstance(target, torch.Tensor)
            and s.dim() != 1
            and target.dim() != 1
            and s.shape != target.shape
        ):
            raise ValueError(
                f"shape mismatch: {n} has shape {tuple(s.shape)} but {target_name} has shape {tuple(target.shape)}"
            )
    return [_flat(s, n) for s, n in zip(sources, names, strict=True)], _flat(target, target_name)


def ftd(f_ab: FisherLike, f_bb: FisherLike) -> torch.Tensor:
    """Fisher Task Distance d[a,b] = (1/√2)·‖√F̂_ab − √F̂_bb‖₂ with F̂ = F/tr(F) (paper eq. 4).

    ``f_ab`` is the Fisher of the network trained on task a, evaluated on task b's test data; ``f_bb`` that of
    task b's own network on the same data. The result is a float64 0-dim tensor in [0, 1]; d is not symmetric.
    """
    return distance(f_ab, f_bb, metric="ftd", names=("f_ab", "f_bb"))


def distance(
    f_a: FisherLike,
    f_b: FisherLike,
    metric: str = "ftd",
    sigma2: float = DEFAULT_SIGMA2,
    normalize: bool = True,
    names: tuple[str, str] = ("f_a", "f_b"),
) -> torch.Tensor:
    """Distance between two Fisher diagonals as a float64 0-dim tensor.

    - ``"ftd"``: (1/√2)·‖√F̂_a − √F̂_b‖₂ with F̂ = F/tr(F), in [0, 1].
    - ``"logdet"``: (1/n)·|Σ_j log((F_a,j + σ²)/(F_b,j + σ²))| (slides eq. 6, diagonal), on unit-trace Fishers
      unless ``normalize=False``.
    - ``"cosine"``: the cosine similarity Σ F_a F_b / (‖F_a‖·‖F_b‖) (a similarity: 1 means identical direction).
    """
    return distance_column(
        [f_a], f_b, metric=metric, sigma2=sigma2, normalize=normalize, names=[names[0]], target_name=names[1]
    )[0]


def distance_column(
    sources: Sequence[FisherLike],
    target: FisherLike,
    metric: str = "ftd",
    sigma2: float = DEFAULT_SIGMA2,
    normalize: bool = True,
    names: Sequence[str] | None = None,
    target_name: str = "target",
) -> torch.Tensor:
    """Distances of K sources against one target in one kernel launch: a (K,) float64 tensor.

    This is one column of a task-distance matrix (every baseline a against target b). ``metric`` is any name
    in :data:`METRICS` (see :class:`Metric` and :func:`register_metric`).
    """
    entry = get_metric(metric)
    if isinstance(sources, torch.Tensor) and sources.dim() == 2:
        rows, tgt = sources, _flat(target, target_name)
        src_name = "sources"
    else:
        sources = list(sources)
        names = list(names) if names is not None else [f"sources[{i}]" for i in range(len(sources))]
        if len(names) != len(sources):  # zip() below would silently drop the unnamed sources
            raise ValueError(f"got {len(sources)} sources but {len(names)} names")
        flats, tgt = _aligned(sources, target, names, target_name)
        src_name = "\n".join(names)  # the op names each bad row by its own name
        _ops.check_sources(flats, tgt, src_name, target_name)
        if entry.column_in_place is not None and _plain([*flats, tgt]):
            return entry.column_in_place(flats, tgt, sigma2, normalize, src_name, target_name)
        rows = torch.stack(flats) if len(flats) > 1 else flats[0][None] if flats else tgt.new_empty((0, len(tgt)))
    return entry.column(rows, tgt, sigma2, normalize, src_name, target_name)


def _plain(tensors: list[torch.Tensor]) -> bool:
    """Whether the column may read these tensors in place: ordinary CPU/CUDA tensors that no gradient, torch.func
    transform or torch.compile trace needs to see through (those take the stacked, differentiable op)."""
    if torch.compiler.is_compiling() or torch._C._functorch.maybe_current_level() is not None:
        return False
    grad = torch.is_grad_enabled()
    return all(
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.device.type in ("cpu", "cuda")
        and not (grad and t.requires_grad)
        for t in tensors
    )


def distance_matrix(
    fishers: Sequence[Sequence[FisherLike]],
    metric: str = "ftd",
    sigma2: float = DEFAULT_SIGMA2,
    normalize: bool = True,
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """The K×K task-distance matrix from a K×K grid of Fishers: a (K, K) float64 tensor.

    ``fishers[a][b]`` is F_ab, the Fisher of the network trained on task a evaluated on task b's data, so
    ``d[a, b] = metric(F_ab, F_bb)`` (for FTD, (1/√2)·‖√F̂_ab − √F̂_bb‖). Every Fisher is read once, in place: column
    b is one kernel pass over the K − 1 sources F_ab (a ≠ b) and its target F_bb. The diagonal compares F_bb with
    itself, so it holds the metric's self value (0 for a distance, 1 for cosine) without a pass of its own.
    ``names``: the K task names, for error messages (``F[a→b]``); 0, 1, ... otherwise.
    """
    entry = get_metric(metric)
    grid = [list(row) for row in fishers]
    k = len(grid)
    names = [str(i) for i in range(k)] if names is None else [str(n) for n in names]
    if len(names) != k:
        raise ValueError(f"got {k} rows of Fishers but {len(names)} names")
    for a, row in enumerate(grid):
        if len(row) != k:
            raise ValueError(f"fishers must be a K×K grid: row {a} ({names[a]}) has {len(row)} entries, K = {k}")
    out = torch.full((k, k), entry.self_value, dtype=torch.float64)
    for b in range(k):
        others = [a for a in range(k) if a != b]
        if not others:
            # A single task: still check its Fisher (a column with no sources checks its target).
            distance_column([], grid[b][b], metric, sigma2, normalize, [], f"F[{names[b]}→{names[b]}]")
            continue
        col = distance_column(
            [grid[a][b] for a in others],
            grid[b][b],
            metric=metric,
            sigma2=sigma2,
            normalize=normalize,
            names=[f"F[{names[a]}→{names[b]}]" for a in others],
            target_name=f"F[{names[b]}→{names[b]}]",
        )
        out = out.to(col.device)
        out[others, b] = col
    return out
