"""FisherDiag: the result of :func:`fisherx.fisher_diag`, a read-only mapping parameter name → Fisher diagonal."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

import torch

from .. import io as fx_io

_FORMAT = "fisherx.FisherDiag"
_FORMAT_VERSION = 1  # files without bootstrap replicates (readable by every fisherx)
_FORMAT_VERSION_REPLICATES = 2  # files with them: tensors "replicates/<name>" and "replicate_weights"
_REP = "replicates/"


class FisherDiag(Mapping):
    """Diagonal Fisher F_j = (1/N) Σ_i (∂ℓ_i/∂θ_j)², per parameter, in the parameters' shapes.

    A read-only mapping name → tensor (in the model's ``named_parameters`` order), with ``n_samples`` (N) and
    ``meta`` (model class, parameter count, loss, kind, and anything the caller adds: ``meta`` is a plain dict
    of JSON-serialisable values, e.g. ``f.meta["task"] = "mnist/T0"``).

    ``replicates`` (from ``fisher_diag(bootstrap=R)``, else None): name → (R, *shape) tensors, replicate r being
    F_r = Σ_i w_ri·(∂ℓ_i/∂θ)² / Σ_i w_ri with Poisson(1) weights; ``replicate_weights`` the (R,) float64 totals
    Σ_i w_ri. :meth:`replicate` gives replicate r as a FisherDiag, :meth:`replicates_flat` all of them as (R, n).
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        n_samples: int,
        meta: dict | None = None,
        *,
        replicates: Mapping[str, torch.Tensor] | None = None,
        replicate_weights: torch.Tensor | None = None,
    ):
        if not tensors:
            raise ValueError("a FisherDiag needs at least one parameter")
        if int(n_samples) <= 0:
            raise ValueError(f"n_samples must be positive, got {n_samples}")
        self._t = {k: v.detach() for k, v in tensors.items()}
        self.n_samples = int(n_samples)
        self.meta = dict(meta or {})
        self._reps: dict[str, torch.Tensor] | None = None
        self.replicate_weights: torch.Tensor | None = None  # set together with _reps
        if replicates is not None:
            if sorted(replicates) != sorted(self._t):
                raise ValueError("replicates must cover exactly the Fisher's parameters")
            reps = {k: replicates[k].detach() for k in self._t}
            counts = {v.shape[0] for v in reps.values()}
            if len(counts) != 1 or any(reps[k].shape[1:] != self._t[k].shape for k in reps):
                raise ValueError("replicates must be (R, *shape) tensors with one R for every parameter")
            r = counts.pop()
            if replicate_weights is None or tuple(replicate_weights.shape) != (r,):
                raise ValueError(f"replicate_weights must be a ({r},) tensor of the replicates' weight totals")
            self._reps = reps
            self.replicate_weights = replicate_weights.detach().to(torch.float64).cpu()

    # Mapping protocol ------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        n = sum(t.numel() for t in self._t.values())
        return (
            f"FisherDiag({len(self)} tensors, {n} entries, n_samples={self.n_samples}, "
            f"kind={self.meta.get('kind')!r}, loss={self.meta.get('loss')!r})"
        )

    @property
    def tensors(self) -> Mapping[str, torch.Tensor]:
        """A read-only view of the name → tensor dict."""
        return MappingProxyType(self._t)

    # Bootstrap replicates ---------------------------------------------------------------------------------------
    @property
    def replicates(self) -> Mapping[str, torch.Tensor] | None:
        """name → (R, *shape) bootstrap replicates (read-only view), or None without bootstrap."""
        return None if self._reps is None else MappingProxyType(self._reps)

    @property
    def n_replicates(self) -> int:
        """R, the number of bootstrap replicates (0 without bootstrap)."""
        return 0 if self.replicate_weights is None else int(self.replicate_weights.shape[0])

    def replicate(self, r: int) -> FisherDiag:
        """Bootstrap replicate ``r`` as a FisherDiag (n_samples: the rounded weight total Σ_i w_ri)."""
        if not 0 <= r < self.n_replicates:
            raise IndexError(f"replicate {r} out of range: this Fisher has {self.n_replicates} replicates")
        assert self._reps is not None and self.replicate_weights is not None  # n_replicates > 0
        n = max(1, int(round(float(self.replicate_weights[r]))))
        return FisherDiag({k: v[r] for k, v in self._reps.items()}, n, dict(self.meta, replicate=r))

    def replicates_flat(self) -> torch.Tensor:
        """(R, n): every replicate's entries concatenated in parameter order (the rows the distances compare)."""
        if self._reps is None:
            raise ValueError("this Fisher has no bootstrap replicates: compute it with fisher_diag(..., bootstrap=R)")
        return torch.cat([t.reshape(t.shape[0], -1) for t in self._reps.values()], dim=1)

    # Reductions -------------------------------------------------------------------------------------------------
    def flat(self) -> torch.Tensor:
        """All entries concatenated in parameter order: the vector the distances compare."""
        return torch.cat([t.reshape(-1) for t in self._t.values()])

    def trace(self) -> float:
        """tr(F) = Σ_j F_j, accumulated in float64."""
        return float(sum(t.to(torch.float64).sum() for t in self._t.values()))

    def normalized(self) -> FisherDiag:
        """F̂ = F / tr(F) (unit trace). A zero or non-finite trace is an error, not a NaN result."""
        tr = self.trace()
        if not math.isfinite(tr):
            raise ValueError("this Fisher contains NaN or Inf; it cannot be normalised")
        if tr <= 0.0:
            raise ValueError("this Fisher has zero trace, so its unit-trace normalisation is undefined")
        reps = None
        if self._reps is not None:  # each replicate by its own trace
            trs = torch.stack([t.to(torch.float64).reshape(t.shape[0], -1).sum(1) for t in self._reps.values()]).sum(0)
            if not bool(torch.isfinite(trs).all()) or bool((trs <= 0).any()):
                raise ValueError("a bootstrap replicate of this Fisher has zero or non-finite trace")
            reps = {k: v / trs.to(v.device, v.dtype).reshape(-1, *[1] * (v.dim() - 1)) for k, v in self._reps.items()}
        return FisherDiag(
            {k: v / tr for k, v in self._t.items()},
            self.n_samples,
            dict(self.meta, normalized=True),
            replicates=reps,
            replicate_weights=self.replicate_weights,
        )

    def merge(self, other: FisherDiag) -> FisherDiag:
        """Combine two partial results over disjoint samples: (n_a·F_a + n_b·F_b) / (n_a + n_b).

        Both must cover the same parameters with the same shapes (the mismatch is named otherwise); the metadata
        of ``self`` is kept, with n_samples the sum.
        """
        if not isinstance(other, FisherDiag):
            raise TypeError(f"can only merge a FisherDiag, got {type(other).__name__}")
        if self._reps is not None or other._reps is not None:
            # The bootstrap weights are keyed by sample index within each call, so two partial results reuse the
            # same weights for different samples: their replicates cannot be combined into a valid bootstrap.
            raise ValueError(
                "cannot merge Fishers with bootstrap replicates (their weights are keyed by sample "
                "index within each call); compute the bootstrap in one fisher_diag call"
            )
        from ..distance import check_same_layout

        check_same_layout(self, other, "self", "other")
        for key in ("loss", "kind"):
            if self.meta.get(key) != other.meta.get(key):
                raise ValueError(
                    f"cannot merge Fishers with different {key}: {self.meta.get(key)!r} vs {other.meta.get(key)!r}"
                )
        na, nb = self.n_samples, other.n_samples
        n = na + nb
        merged = {k: (self._t[k] * na + other._t[k].to(self._t[k].device) * nb) / n for k in self._t}
        return FisherDiag(merged, n, dict(self.meta))

    # Tensor-container habits ------------------------------------------------------------------------------------
    def _map(self, fn, meta: dict | None = None, keep_replicates: bool = True) -> FisherDiag:
        reps = {k: fn(v) for k, v in self._reps.items()} if keep_replicates and self._reps is not None else None
        return FisherDiag(
            {k: fn(v) for k, v in self._t.items()},
            self.n_samples,
            dict(self.meta) if meta is None else meta,
            replicates=reps,
            replicate_weights=self.replicate_weights if reps is not None else None,
        )

    def to(self, *args, **kwargs) -> FisherDiag:
        """Every tensor (replicates included) moved/cast as ``Tensor.to(*args, **kwargs)`` would; same layout."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def cpu(self) -> FisherDiag:
        """The Fisher on the CPU."""
        return self.to("cpu")

    def double(self) -> FisherDiag:
        """The Fisher in float64."""
        return self.to(torch.float64)

    def float(self) -> FisherDiag:
        """The Fisher in float32."""
        return self.to(torch.float32)

    @property
    def device(self) -> torch.device:
        """The device of the tensors (of the first one: fisher_diag puts them all on the model's device)."""
        return next(iter(self._t.values())).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the tensors (of the first one)."""
        return next(iter(self._t.values())).dtype

    def state_dict(self) -> dict:
        """Everything this Fisher holds as plain tensors, numbers and dicts (``torch.save(..., weights_only=True)``
        and :func:`fisherx.io.save_tree` can store it): rebuild it with :meth:`from_state_dict`."""
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION if self._reps is None else _FORMAT_VERSION_REPLICATES,
            "n_samples": self.n_samples,
            "meta": dict(self.meta),
            "tensors": dict(self._t),
            "replicates": None if self._reps is None else dict(self._reps),
            "replicate_weights": self.replicate_weights,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping) -> FisherDiag:
        """The FisherDiag of a :meth:`state_dict`; anything else is refused with what is wrong."""
        if not isinstance(state, Mapping) or state.get("format") != _FORMAT:
            raise ValueError("not a FisherDiag state dict (it needs format='fisherx.FisherDiag')")
        missing = {"n_samples", "meta", "tensors"} - set(state)
        if missing:
            raise ValueError(f"FisherDiag state dict lacks {sorted(missing)}")
        return cls(
            state["tensors"],
            state["n_samples"],
            state["meta"],
            replicates=state.get("replicates"),
            replicate_weights=state.get("replicate_weights"),
        )

    # Elementwise arithmetic: by scalars or by a FisherDiag of the same layout; the result keeps the layout and
    # self's n_samples and meta, and carries no bootstrap replicates (a sum of replicates is not a replicate).
    def _binary(self, other, op, reflected: bool = False) -> FisherDiag:
        if isinstance(other, FisherDiag):
            from ..distance import check_same_layout

            check_same_layout(self, other, "self", "other")
            return FisherDiag(
                {k: op(other._t[k], v) if reflected else op(v, other._t[k]) for k, v in self._t.items()},
                self.n_samples,
                dict(self.meta),
            )
        if isinstance(other, torch.Tensor) and other.dim() == 0:
            other = other.item()
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        return self._map(lambda v: op(other, v) if reflected else op(v, other), keep_replicates=False)

    def __add__(self, other):
        return self._binary(other, operator.add)

    def __radd__(self, other):
        return self._binary(other, operator.add, reflected=True)

    def __sub__(self, other):
        return self._binary(other, operator.sub)

    def __rsub__(self, other):
        return self._binary(other, operator.sub, reflected=True)

    def __mul__(self, other):
        return self._binary(other, operator.mul)

    def __rmul__(self, other):
        return self._binary(other, operator.mul, reflected=True)

    def __truediv__(self, other):
        return self._binary(other, operator.truediv)

    def __rtruediv__(self, other):
        return self._binary(other, operator.truediv, reflected=True)

    def __neg__(self) -> FisherDiag:
        return self._map(torch.neg, keep_replicates=False)

    # Files ------------------------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write to ``path`` with :func:`fisherx.io.save_tensors`: a safetensors file (the parameters under their
        own names, replicates as ``replicates/<name>``), no pickle, atomic, SHA-256 over the whole file."""
        meta = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "n_samples": self.n_samples,
            "order": list(self._t),
            "meta": self.meta,
        }
        tensors = {k: v.cpu() for k, v in self._t.items()}
        if self._reps is not None and self.replicate_weights is not None:
            meta["format_version"] = _FORMAT_VERSION_REPLICATES
            tensors.update({_REP + k: v.cpu() for k, v in self._reps.items()})
            tensors["replicate_weights"] = self.replicate_weights
        return fx_io.save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path, map_location=None) -> FisherDiag:
        """Read a file written by :meth:`save`; a truncated or foreign file raises fisherx.io.FormatError."""
        tensors, meta = fx_io.load_tensors(path)
        if meta.get("format") != _FORMAT:
            raise fx_io.FormatError(f"{path}: not a FisherDiag file (format {meta.get('format')!r})")
        if meta.get("format_version", 0) > _FORMAT_VERSION_REPLICATES:
            raise fx_io.FormatError(
                f"{path}: FisherDiag format version {meta['format_version']} is newer than "
                f"this fisherx understands ({_FORMAT_VERSION_REPLICATES})"
            )
        reps = {k[len(_REP) :]: tensors.pop(k) for k in list(tensors) if k.startswith(_REP)}
        wts = tensors.pop("replicate_weights", None)
        order = meta.get("order", list(tensors))
        if not isinstance(order, list) or not all(isinstance(k, str) for k in order):
            raise fx_io.FormatError(f"{path}: the recorded parameter order is not a list of names")
        consistent = not reps or (sorted(reps) == sorted(order) and wts is not None)
        if sorted(order) != sorted(tensors) or not consistent or (wts is not None and not reps):
            raise fx_io.FormatError(f"{path}: the tensor list does not match the recorded parameter order")
        out = {k: tensors[k] for k in order}
        if map_location is not None:
            out = {k: v.to(map_location) for k, v in out.items()}
            reps = {k: v.to(map_location) for k, v in reps.items()}
        try:
            if not reps:
                return cls(out, meta["n_samples"], meta.get("meta", {}))
            return cls(out, meta["n_samples"], meta.get("meta", {}), replicates=reps, replicate_weights=wts)
        except (KeyError, TypeError, ValueError) as exc:
            raise fx_io.FormatError(f"{path}: not a consistent FisherDiag file ({type(exc).__name__}: {exc})") from None
