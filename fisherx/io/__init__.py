"""Files: the tensor-file format (``files``: atomic writes, ``.fx`` tensors and trees) and the content-addressed
cache of networks and Fishers (``cache``). Every file fisherx writes goes through here."""
from __future__ import annotations

from .files import (
    FORMAT_VERSION,
    MAGIC,
    FormatError,
    atomic_write_bytes,
    atomic_write_text,
    load_tensors,
    load_tree,
    save_tensors,
    save_tree,
)

__all__ = ["FORMAT_VERSION", "MAGIC", "FormatError", "atomic_write_bytes", "atomic_write_text", "load_tensors",
           "load_tree", "save_tensors", "save_tree"]
