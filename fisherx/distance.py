"""Distances between Fisher diagonals: Fisher Task Distance (FTD), log-determinant distance, cosine similarity.

All three accept flat tensors or Fisher results (anything with ``.flat()`` and a name → tensor mapping, such as
:class:`fisherx.FisherDiag`); two Fisher results must cover the same parameters with the same shapes. The
reductions run in the fused kernels of :mod:`fisherx._ops` with float64 accumulation.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

import torch

from . import _ops

METRICS = ("ftd", "logdet", "cosine")
DEFAULT_SIGMA2 = 1e-8

FisherLike = Union[torch.Tensor, Mapping]


def _layout(f: Mapping) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in f.items()]


def _check_same_layout(a: Mapping, b: Mapping, name_a: str, name_b: str) -> None:
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
    for s, n in zip(sources, names):
        if isinstance(s, Mapping) and isinstance(target, Mapping):
            _check_same_layout(s, target, n, target_name)
        # Parameter-shaped tensors are flattened, so (2, 3) against (3, 2) would silently pair the wrong entries:
        # shapes must agree unless one side is already flat.
        if (isinstance(s, torch.Tensor) and isinstance(target, torch.Tensor) and s.dim() != 1
                and target.dim() != 1 and s.shape != target.shape):
            raise ValueError(f"shape mismatch: {n} has shape {tuple(s.shape)} but {target_name} has shape "
                             f"{tuple(target.shape)}")
    return [_flat(s, n) for s, n in zip(sources, names)], _flat(target, target_name)


def ftd(f_ab: FisherLike, f_bb: FisherLike) -> torch.Tensor:
    """Fisher Task Distance d[a,b] = (1/√2)·‖√F̂_ab − √F̂_bb‖₂ with F̂ = F/tr(F) (paper eq. 4).

    ``f_ab`` is the Fisher of the network trained on task a, evaluated on task b's test data; ``f_bb`` that of
    task b's own network on the same data. The result is a float64 0-dim tensor in [0, 1]; d is not symmetric.
    """
    return distance(f_ab, f_bb, metric="ftd", names=("f_ab", "f_bb"))


def distance(f_a: FisherLike, f_b: FisherLike, metric: str = "ftd", sigma2: float = DEFAULT_SIGMA2,
             normalize: bool = True, names: tuple[str, str] = ("f_a", "f_b")) -> torch.Tensor:
    """Distance between two Fisher diagonals as a float64 0-dim tensor.

    - ``"ftd"``: (1/√2)·‖√F̂_a − √F̂_b‖₂ with F̂ = F/tr(F), in [0, 1].
    - ``"logdet"``: (1/n)·|Σ_j log((F_a,j + σ²)/(F_b,j + σ²))| (slides eq. 6, diagonal), on unit-trace Fishers
      unless ``normalize=False``.
    - ``"cosine"``: the cosine similarity Σ F_a F_b / (‖F_a‖·‖F_b‖) (a similarity: 1 means identical direction).
    """
    return distance_column([f_a], f_b, metric=metric, sigma2=sigma2, normalize=normalize,
                           names=[names[0]], target_name=names[1])[0]


def distance_column(sources: Sequence[FisherLike], target: FisherLike, metric: str = "ftd",
                    sigma2: float = DEFAULT_SIGMA2, normalize: bool = True, names: Sequence[str] | None = None,
                    target_name: str = "target") -> torch.Tensor:
    """Distances of K sources against one target in one kernel launch: a (K,) float64 tensor.

    This is one column of a task-distance matrix (every baseline a against target b).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if isinstance(sources, torch.Tensor) and sources.dim() == 2:
        rows, tgt = sources, _flat(target, target_name)
        src_name = "sources"
    else:
        sources = list(sources)
        names = list(names) if names is not None else [f"sources[{i}]" for i in range(len(sources))]
        if len(names) != len(sources):  # zip() below would silently drop the unnamed sources
            raise ValueError(f"got {len(sources)} sources but {len(names)} names")
        flats, tgt = _aligned(sources, target, names, target_name)
        if not flats:
            return torch.empty(0, dtype=torch.float64)
        for f, n in zip(flats, names):
            if f.shape != tgt.shape or f.device != tgt.device or f.dtype != tgt.dtype:
                # Let the op name the problem precisely.
                _ops._check_column(f[None] if f.dim() == 1 else f, tgt, n, target_name)
        rows = flats[0][None] if len(flats) == 1 else torch.stack(flats)
        src_name = "\n".join(names)  # the op names each bad row by its own name
    if metric == "logdet":
        return _ops.differentiable["logdet_column"](rows, tgt, float(sigma2), bool(normalize), src_name, target_name)
    return _ops.differentiable[f"{metric}_column"](rows, tgt, src_name, target_name)
