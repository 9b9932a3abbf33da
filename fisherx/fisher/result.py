"""FisherDiag: the result of :func:`fisherx.fisher_diag`, a read-only mapping parameter name → Fisher diagonal."""
from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Iterator

import torch

from .. import io as fx_io

_FORMAT = "fisherx.FisherDiag"
_FORMAT_VERSION = 1


class FisherDiag(Mapping):
    """Diagonal Fisher F_j = (1/N) Σ_i (∂ℓ_i/∂θ_j)², per parameter, in the parameters' shapes.

    A read-only mapping name → tensor (in the model's ``named_parameters`` order), with ``n_samples`` (N) and
    ``meta`` (model class, parameter count, loss, kind, and anything the caller adds: ``meta`` is a plain dict
    of JSON-serialisable values, e.g. ``f.meta["task"] = "mnist/T0"``).
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], n_samples: int, meta: dict | None = None):
        if not tensors:
            raise ValueError("a FisherDiag needs at least one parameter")
        if int(n_samples) <= 0:
            raise ValueError(f"n_samples must be positive, got {n_samples}")
        self._t = {k: v.detach() for k, v in tensors.items()}
        self.n_samples = int(n_samples)
        self.meta = dict(meta or {})

    # Mapping protocol ------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        n = sum(t.numel() for t in self._t.values())
        return (f"FisherDiag({len(self)} tensors, {n} entries, n_samples={self.n_samples}, "
                f"kind={self.meta.get('kind')!r}, loss={self.meta.get('loss')!r})")

    @property
    def tensors(self) -> Mapping[str, torch.Tensor]:
        """A read-only view of the name → tensor dict."""
        return MappingProxyType(self._t)

    # Reductions -------------------------------------------------------------------------------------------------
    def flat(self) -> torch.Tensor:
        """All entries concatenated in parameter order: the vector the distances compare."""
        return torch.cat([t.reshape(-1) for t in self._t.values()])

    def trace(self) -> float:
        """tr(F) = Σ_j F_j, accumulated in float64."""
        return float(sum(t.to(torch.float64).sum() for t in self._t.values()))

    def normalized(self) -> "FisherDiag":
        """F̂ = F / tr(F) (unit trace). A zero or non-finite trace is an error, not a NaN result."""
        tr = self.trace()
        if not math.isfinite(tr):
            raise ValueError("this Fisher contains NaN or Inf; it cannot be normalised")
        if tr <= 0.0:
            raise ValueError("this Fisher has zero trace, so its unit-trace normalisation is undefined")
        return FisherDiag({k: v / tr for k, v in self._t.items()}, self.n_samples, dict(self.meta, normalized=True))

    def merge(self, other: "FisherDiag") -> "FisherDiag":
        """Combine two partial results over disjoint samples: (n_a·F_a + n_b·F_b) / (n_a + n_b).

        Both must cover the same parameters with the same shapes (the mismatch is named otherwise); the metadata
        of ``self`` is kept, with n_samples the sum.
        """
        if not isinstance(other, FisherDiag):
            raise TypeError(f"can only merge a FisherDiag, got {type(other).__name__}")
        from ..distance import _check_same_layout
        _check_same_layout(self, other, "self", "other")
        for key in ("loss", "kind"):
            if self.meta.get(key) != other.meta.get(key):
                raise ValueError(f"cannot merge Fishers with different {key}: {self.meta.get(key)!r} vs "
                                 f"{other.meta.get(key)!r}")
        na, nb = self.n_samples, other.n_samples
        n = na + nb
        merged = {k: (self._t[k] * na + other._t[k].to(self._t[k].device) * nb) / n for k in self._t}
        return FisherDiag(merged, n, dict(self.meta))

    # Files ------------------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write to ``path`` with :func:`fisherx.io.save_tensors`: no pickle, atomic, checksummed."""
        meta = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "n_samples": self.n_samples,
                "order": list(self._t), "meta": self.meta}
        return fx_io.save_tensors(path, {k: v.cpu() for k, v in self._t.items()}, meta)

    @classmethod
    def load(cls, path, map_location=None) -> "FisherDiag":
        """Read a file written by :meth:`save`; a truncated or foreign file raises fisherx.io.FormatError."""
        tensors, meta = fx_io.load_tensors(path)
        if meta.get("format") != _FORMAT:
            raise fx_io.FormatError(f"{path}: not a FisherDiag file (format {meta.get('format')!r})")
        if meta.get("format_version", 0) > _FORMAT_VERSION:
            raise fx_io.FormatError(f"{path}: FisherDiag format version {meta['format_version']} is newer than "
                                    f"this fisherx understands ({_FORMAT_VERSION})")
        order = meta.get("order", list(tensors))
        if sorted(order) != sorted(tensors):
            raise fx_io.FormatError(f"{path}: the tensor list does not match the recorded parameter order")
        out = {k: tensors[k] for k in order}
        if map_location is not None:
            out = {k: v.to(map_location) for k, v in out.items()}
        return cls(out, meta["n_samples"], meta.get("meta", {}))
