"""Safe, atomic files for everything fisherx writes: Fishers, trained networks, search checkpoints.

Why a format of our own: ``torch.load`` of a pickle can execute code, and a file cut short by a crash must never
be mistaken for a result. A fisherx file is

    b"FISHERX\\0" | u32 format version | u64 header length | header (UTF-8 JSON) | raw tensor bytes

The header names every tensor (dtype, shape, offset, size), carries the caller's JSON metadata and the SHA-256 of
the tensor bytes, so a truncated, corrupted or foreign file is refused with :class:`FormatError` naming the file.
Files are written to a temporary file in the same directory, fsync'ed and renamed over the target, so a reader
sees either the old file or the new one, never half of one (also after ``kill -9``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

MAGIC = b"FISHERX\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")  # magic, format version, header length

PathLike = Union[str, os.PathLike]

_DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
    "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
    "bool": torch.bool, "complex64": torch.complex64, "complex128": torch.complex128,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class FormatError(ValueError):
    """A file is not a valid fisherx file (foreign, truncated, corrupted, or of an unknown version)."""


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    # The rename itself must reach the disk for the write to survive a power cut; not all systems allow it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------
# Flat tensor files


def save_tensors(path: PathLike, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """Save named tensors and JSON-serialisable ``meta`` atomically in the fisherx format."""
    entries, blobs, offset = [], [], 0
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save_tensors: {name!r} is a {type(t).__name__}, not a tensor")
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(f"save_tensors: {name!r} has unsupported dtype {t.dtype}")
        if t.is_sparse or t.layout != torch.strided:
            raise TypeError(f"save_tensors: {name!r} is not a dense tensor")
        raw = _tensor_bytes(t)
        entries.append({"name": name, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "offset": offset, "nbytes": len(raw)})
        blobs.append(raw)
        offset += len(raw)
    data = b"".join(blobs)
    header = {"tensors": entries, "meta": meta if meta is not None else {},
              "data_nbytes": len(data), "data_sha256": hashlib.sha256(data).hexdigest()}
    try:
        head = json.dumps(header, allow_nan=False, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save_tensors: meta for {path} is not plain JSON ({exc})") from exc
    return atomic_write_bytes(path, _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head + data)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return b""
    # Viewing as bytes works for every dtype (bfloat16 and bool have no numpy twin to go through).
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def load_tensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a file written by :func:`save_tensors`: ``(tensors, meta)``. Never unpickles anything."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such fisherx file: {path}") from None
    if len(raw) < _PREFIX.size or raw[:8] != MAGIC:
        raise FormatError(f"{path} is not a fisherx file (wrong magic bytes)")
    _, version, head_len = _PREFIX.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise FormatError(f"{path} has fisherx format version {version}; this fisherx reads version {FORMAT_VERSION}")
    if _PREFIX.size + head_len > len(raw):
        raise FormatError(f"{path} is truncated (header runs past the end of the file)")
    try:
        header = json.loads(raw[_PREFIX.size:_PREFIX.size + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path} has a corrupted header ({exc})") from exc
    data = memoryview(raw)[_PREFIX.size + head_len:]
    if len(data) != header.get("data_nbytes"):
        raise FormatError(f"{path} is truncated or has trailing bytes: {len(data)} data bytes, "
                          f"expected {header.get('data_nbytes')}")
    if hashlib.sha256(data).hexdigest() != header.get("data_sha256"):
        raise FormatError(f"{path} is corrupted (checksum mismatch)")
    tensors = {}
    for e in header["tensors"]:
        dtype = _DTYPES.get(e["dtype"])
        if dtype is None:
            raise FormatError(f"{path}: tensor {e['name']!r} has unknown dtype {e['dtype']!r}")
        chunk = data[e["offset"]:e["offset"] + e["nbytes"]]
        flat = torch.frombuffer(bytearray(chunk), dtype=torch.uint8) if e["nbytes"] else torch.empty(0, dtype=torch.uint8)
        tensors[e["name"]] = flat.view(dtype).reshape(e["shape"]) if e["nbytes"] else torch.empty(e["shape"], dtype=dtype)
    return tensors, header["meta"]


# ---------------------------------------------------------------------------------------------------------------
# Nested structures: state dicts, optimiser states, random-number states


def save_tree(path: PathLike, obj: Any, meta: dict | None = None) -> Path:
    """Save a nested structure of dicts, lists, tuples, tensors, numpy arrays and JSON scalars atomically.

    Dict keys may be str, int, float, bool or None (optimiser state dicts use int keys); tuples stay tuples; non-finite
    floats survive. Anything else is refused with the path to the offending value.
    """
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, tensors, "obj")
    return save_tensors(path, tensors, {"tree": tree, "meta": meta if meta is not None else {}})


def load_tree(path: PathLike, with_meta: bool = False):
    """Load what :func:`save_tree` wrote; with ``with_meta`` return ``(obj, meta)``."""
    tensors, header = load_tensors(path)
    if "tree" not in header:
        raise FormatError(f"{path} holds flat tensors, not a saved tree (use load_tensors)")
    obj = _decode(header["tree"], tensors, path)
    return (obj, header.get("meta", {})) if with_meta else obj


def _encode(obj: Any, tensors: dict, where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else {"__float__": repr(f)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}[{k!r}]") for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (str, int, float, bool))):
                raise TypeError(f"save_tree: {where} has a key of type {type(k).__name__}, which cannot be saved")
            items.append([_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")])
        return {"__dict__": items}
    raise TypeError(f"save_tree: {where} is a {type(obj).__name__}, which cannot be saved without pickle")


def _decode(node: Any, tensors: dict, path: PathLike) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors, path) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node or "__ndarray__" in node:
        key = node.get("__tensor__", node.get("__ndarray__"))
        if key not in tensors:
            raise FormatError(f"{path}: the tree refers to a missing tensor {key!r}")
        return tensors[key] if "__tensor__" in node else tensors[key].numpy()
    if "__float__" in node:
        return float(node["__float__"])
    if "__tuple__" in node:
        return tuple(_decode(v, tensors, path) for v in node["__tuple__"])
    if "__dict__" in node:
        return {_decode(k, tensors, path): _decode(v, tensors, path) for k, v in node["__dict__"]}
    return {k: _decode(v, tensors, path) for k, v in node.items()}
