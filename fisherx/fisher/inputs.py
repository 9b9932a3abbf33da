"""What :func:`fisherx.fisher_diag` accepts as data, model and output, turned into what the engine runs on.

- data: a pair (X, Y) of tensors or numpy arrays, a map-style ``Dataset`` (batched here, in order), a
  ``DataLoader`` or any iterable of batches. A batch is an (inputs, targets) pair, a dict holding the targets under
  ``label_key`` (default "labels", the Hugging Face convention; the other entries are the model's keyword inputs),
  or anything a ``batch_fn(batch) -> (inputs, targets)`` splits.
- model: a ``torch.compile``d module is unwrapped to its original module (``_orig_mod``): the Fisher needs the
  eager module's hooks, and the two share their parameters, so the result is the same.
- output: a tensor as is; ``output_fn`` selects the logits from anything else (a callable, a key, an attribute
  name or a tuple index); without it, an output with ``.logits`` (or a "logits" key) gives those.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

DEFAULT_LABEL_KEY = "labels"


def unwrap_compiled(model):
    """The original module of a ``torch.compile``d one (with a warning saying so); any other model as is."""
    orig = getattr(model, "_orig_mod", None)
    if isinstance(model, nn.Module) and isinstance(orig, nn.Module):
        warnings.warn(
            f"fisher_diag: the model is torch.compile'd; computing the Fisher on its original "
            f"{type(orig).__name__} (same parameters, names without the '_orig_mod.' prefix)",
            UserWarning,
            stacklevel=3,
        )
        return orig
    return model


def _tensor(v):
    return torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v


def split_batch(batch, k: int, label_key: str | None, batch_fn: Callable | None) -> tuple[Any, Any]:
    """(model inputs, targets) of batch ``k``; one clear error when the batch is neither a pair nor a dict with
    targets."""
    if batch_fn is not None:
        out = batch_fn(batch)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(
                f"batch_fn must return an (inputs, targets) pair; for batch {k} it returned {type(out).__name__}"
            )
        return _tensor(out[0]), _tensor(out[1])
    if isinstance(batch, Mapping):
        key = label_key or DEFAULT_LABEL_KEY
        if key not in batch:
            raise TypeError(
                f"batch {k} is a dict without the targets key {key!r} (it has "
                f"{', '.join(map(repr, batch))}); pass label_key=... or batch_fn=..."
            )
        return {n: _tensor(v) for n, v in batch.items() if n != key}, _tensor(batch[key])
    if label_key is not None:
        raise TypeError(f"label_key={label_key!r} but batch {k} is a {type(batch).__name__}, not a dict")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return _tensor(batch[0]), _tensor(batch[1])
    n = f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    raise TypeError(
        f"batch {k} is not an (x, y) pair (got {type(batch).__name__}{n}); pass batch_fn=... to split "
        "it into model inputs and targets"
    )


def prepare(
    data,
    *,
    label_key: str | None = None,
    batch_fn: Callable | None = None,
    batch_size: int | None = None,
    pair_batch: int = 256,
) -> tuple[Any, int | None]:
    """(what the engine iterates: a pair of tensors or an iterable of (inputs, targets) pairs, sample count if
    known)."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data)
    ):
        x, y = (_tensor(t) for t in data)
        if batch_size is None and label_key is None and batch_fn is None:
            return (x, y), None
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"the input and target arrays have {x.shape[0]} and {y.shape[0]} samples")
        step = batch_size or pair_batch
        return [(x[s : s + step], y[s : s + step]) for s in range(0, x.shape[0], step)], x.shape[0]
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
        data = DataLoader(data, batch_size=batch_size or pair_batch, shuffle=False)
    elif isinstance(data, (torch.Tensor, np.ndarray)) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be a Dataset, a DataLoader, an iterable of batches, or a pair (X, Y) of tensors "
            f"or numpy arrays; got {type(data).__name__}"
        )
    elif batch_size is not None:
        raise ValueError(
            "batch_size applies to a Dataset or a pair (X, Y); a DataLoader or iterable is already batched"
        )
    ds = getattr(data, "dataset", None)
    total = len(ds) if ds is not None and hasattr(ds, "__len__") else None
    return _Split(data, label_key, batch_fn), total


class _Split:
    """An iterable of batches, each split into (inputs, targets) as it comes."""

    def __init__(self, data, label_key, batch_fn):
        self.data, self.label_key, self.batch_fn = data, label_key, batch_fn
        self.dataset = getattr(data, "dataset", None)

    def __iter__(self):
        for k, batch in enumerate(self.data):
            yield split_batch(batch, k, self.label_key, self.batch_fn)


def select_output(out, output_fn):
    """The logits tensor from the model's output (see the module docstring)."""
    if output_fn is None:
        if isinstance(out, torch.Tensor):
            return out
        logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
        if isinstance(logits, torch.Tensor):
            return logits
        raise TypeError(
            f"the model returned {type(out).__name__}, not a tensor; pass output_fn= to select the "
            "logits (a function of the output, a key, an attribute name or an index, e.g. output_fn=0)"
        )
    if callable(output_fn):
        sel = output_fn(out)
    elif isinstance(output_fn, int) and isinstance(out, (tuple, list)):
        sel = out[output_fn]
    elif isinstance(output_fn, str) and isinstance(out, Mapping):
        sel = out.get(output_fn)
    elif isinstance(output_fn, str):
        sel = getattr(out, output_fn, None)
    else:
        raise TypeError(
            f"output_fn={output_fn!r} cannot select from a {type(out).__name__} output; pass a function of the output"
        )
    if not isinstance(sel, torch.Tensor):
        raise TypeError(
            f"output_fn={getattr(output_fn, '__name__', output_fn)!r} selected a {type(sel).__name__} "
            f"from the model's {type(out).__name__} output; it must select the logits tensor"
        )
    return sel
