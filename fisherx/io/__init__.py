"""Files: the tensor-file format (``files``: atomic writes, checksummed safetensors tensors and trees, format-1
``.fx`` still read) and the content-addressed cache of networks and Fishers (``cache``). Every file fisherx
writes goes through here."""

from __future__ import annotations

from .files import (
    FORMAT_VERSION,
    MAGIC,
    FormatError,
    atomic_write_bytes,
    atomic_write_text,
    load_tensors,
    load_tree,
    parse_json,
    save_tensors,
    save_tree,
    sweep_stale_temporaries,
)

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "FormatError",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_tensors",
    "load_tree",
    "parse_json",
    "save_tensors",
    "save_tree",
    "sweep_stale_temporaries",
]
