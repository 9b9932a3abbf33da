"""Safe, atomic files for everything fisherx writes: Fishers, trained networks, search checkpoints.

Why a format of our own rules: ``torch.load`` of a pickle can execute code, and a file cut short or damaged must
never be mistaken for a result. Tensor files are **safetensors** files (readable by ``safetensors.torch.load_file``
and any other safetensors reader)::

    u64 little-endian header length N | header (N bytes of UTF-8 JSON, space-padded) | raw tensor bytes

The header maps each tensor name to ``{"dtype", "shape", "data_offsets"}`` and holds ``__metadata__``, which
fisherx always writes first, as ``{"fisherx.sha256": <64 hex digits>, "fisherx.format": "2", "fisherx.meta":
<the caller's metadata as JSON>}``. The SHA-256 covers the **whole file** (length, header and data) with its own
64 digits read as zeros, so any change anywhere — a flipped offset, shape digit, name or metadata byte — is refused
with :class:`FormatError` naming the file, before the header is even parsed. Offsets, sizes and shapes are then
checked against the data and JSON nesting is bounded, so a crafted file with a valid checksum is refused too.
Format-1 files (``b"FISHERX\\0"`` magic, their SHA-256 over the tensor bytes only) are still read.

Files are written to a temporary file in the same directory (created with the permissions the umask gives),
fsync'ed and renamed over the target, so a reader sees the old file or the new one, never half of one (also after
``kill -9``). Temporaries left by an interrupted write (``.NAME.XXXX.tmp``) are removed by the next write to the
same folder once they are older than :data:`STALE_TMP_SECONDS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

MAGIC = b"FISHERX\0"  # format 1 (read only)
FORMAT_VERSION = 2  # the safetensors layout described above
MAX_DEPTH = 64  # deepest JSON nesting a header may have
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
STALE_TMP_SECONDS = 900  # a temporary untouched this long belongs to a writer that died
_PREFIX = struct.Struct("<8sIQ")  # format 1: magic, format version, header length
_LEN = struct.Struct("<Q")
_HEAD_START = b'{"__metadata__":{"fisherx.sha256":"'
_HASH_AT = _LEN.size + len(_HEAD_START)  # where the 64 hex digits sit in a format-2 file
_ZERO_HASH = b"0" * 64

PathLike = str | os.PathLike

# torch dtype ↔ safetensors dtype code ("C128" is fisherx's own: safetensors has no complex128).
_CODES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.bool: "BOOL",
    torch.complex64: "C64",
    torch.complex128: "C128",
}
_FROM_CODE = {v: k for k, v in _CODES.items()}
# format 1 spelled dtypes as torch does
_V1_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
}


class FormatError(ValueError):
    """A file is not a valid fisherx file (foreign, truncated, corrupted, or of an unknown version)."""


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes

_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")


def sweep_stale_temporaries(directory: PathLike, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove ``.NAME.XXXX.tmp`` files in ``directory`` untouched for ``older_than`` seconds (left by writers that
    were killed); returns what was removed. A live writer keeps touching its temporary, so it is never swept."""
    removed = []
    cutoff = time.time() - older_than
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        if not (e.name.startswith(".") and e.name.endswith(".tmp") and _TMP_NAME.match(e.name)):
            continue
        try:
            if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue  # another process swept it first, or it is not ours to remove
    return removed


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends without error (fsync'ed first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path.parent)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        # os.open with 0o666 lets the umask decide the mode, as for any ordinary file (mkstemp forces 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and str(path) not in str(exc):
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial file."""
    path = Path(path)
    with _atomic_file(path) as f:
        f.write(data)
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
# JSON with bounded nesting

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def _check_depth(text: bytes, where: str) -> None:
    depth = 0
    for m in _BRACKETS.finditer(_STRING.sub(b'""', text)):
        depth += 1 if m.group() in (b"[", b"{") else -1
        if depth > MAX_DEPTH:
            raise FormatError(f"{where} nests JSON deeper than {MAX_DEPTH} levels")


def parse_json(text: bytes | str, where: str) -> Any:
    """``json.loads`` that raises :class:`FormatError` naming ``where`` for anything malformed, including nesting
    deeper than :data:`MAX_DEPTH` levels, and refuses NaN/Infinity literals (not JSON)."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    _check_depth(raw, where)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{where} is not valid JSON ({exc})") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# ---------------------------------------------------------------------------------------------------------------
# Flat tensor files


def _tensor_array(name: str, t: Any) -> np.ndarray:
    """The tensor's bytes as a uint8 numpy view (no copy when it is already a contiguous CPU tensor)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"save_tensors: {name!r} is a {type(t).__name__}, not a tensor")
    if t.dtype not in _CODES:
        raise TypeError(f"save_tensors: {name!r} has unsupported dtype {t.dtype}")
    if t.is_sparse or t.layout != torch.strided:
        raise TypeError(f"save_tensors: {name!r} is not a dense tensor")
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return np.empty(0, dtype=np.uint8)
    # Viewing as bytes works for every dtype (bfloat16 and bool have no numpy twin to go through).
    return t.reshape(-1).view(torch.uint8).numpy()


def save_tensors(path: PathLike, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """Save named tensors and JSON-serialisable ``meta`` atomically as a checksummed safetensors file.

    Tensors are laid out largest element size first (so every tensor is aligned in a mapped file) and written
    straight from their memory; the SHA-256 is computed while writing, so the data is touched once.
    """
    path = Path(path)
    arrays = {}
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"save_tensors: tensor names must be str, got {name!r}")
        if name == "__metadata__":
            raise ValueError("save_tensors: '__metadata__' is reserved by the safetensors format")
        a = _tensor_array(name, t)
        arrays[name] = (t.dtype, a)
    try:
        meta_json = json.dumps(meta if meta is not None else {}, allow_nan=False, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save_tensors: meta for {path} is not plain JSON ({exc})") from exc
    layout = sorted(arrays, key=lambda n: -arrays[n][0].itemsize)  # stable: ties keep the caller's order
    offsets, pos = {}, 0
    for n in layout:
        offsets[n] = (pos, pos + arrays[n][1].nbytes)
        pos += arrays[n][1].nbytes
    head = {
        "__metadata__": {"fisherx.sha256": "0" * 64, "fisherx.format": str(FORMAT_VERSION), "fisherx.meta": meta_json}
    }
    for n, (dtype, _) in arrays.items():  # the header keeps the caller's order; offsets follow the layout
        head[n] = {"dtype": _CODES[dtype], "shape": list(tensors[n].shape), "data_offsets": list(offsets[n])}
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(len(text) + _LEN.size) % 8)  # data starts 8-aligned, as safetensors pads it
    prefix = _LEN.pack(len(text)) + text
    assert prefix[:_HASH_AT] == _LEN.pack(len(text)) + _HEAD_START
    h = hashlib.sha256(prefix)
    # hashlib releases the GIL on large buffers: hashing in a thread overlaps it with the writes (~2x faster).
    hasher = threading.Thread(target=lambda: [h.update(arrays[n][1]) for n in layout], daemon=True)
    hasher.start()
    try:
        with _atomic_file(path) as f:
            f.write(prefix)
            for n in layout:
                f.write(arrays[n][1])
            hasher.join()
            f.seek(_HASH_AT)
            f.write(h.hexdigest().encode("ascii"))
    finally:
        hasher.join()
    return path


def load_tensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a file written by :func:`save_tensors` (or a format-1 ``.fx`` file): ``(tensors, meta)``.

    The file is read once, hashed chunk by chunk while it is read; the tensors share that buffer (no copy).
    Everything malformed raises :class:`FormatError` naming the file and what is wrong. Never unpickles anything.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            buf, digest = _read_once(f, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such fisherx file: {path}") from None
    except IsADirectoryError:
        raise FormatError(f"{path} is a directory, not a fisherx file") from None
    if digest is not None:
        return _load_v2(path, buf, digest)
    if bytes(buf[:8]) == MAGIC:
        return _load_v1(path, buf)
    if bytes(buf[8:9]) == b"{":
        raise FormatError(
            f"{path} is not a fisherx file: no fisherx checksum at the start of its header (a "
            "safetensors file from elsewhere, or a damaged one)"
        )
    raise FormatError(
        f"{path} is not a fisherx file (it starts neither with a fisherx safetensors header nor with "
        "the format-1 magic bytes)"
    )


_CHUNK = 8 << 20


def _read_once(f: BinaryIO, path: Path) -> tuple[np.ndarray, str | None]:
    """The whole file in one uninitialised buffer, and for a format-2 file its SHA-256 (64 digits read as zeros),
    hashed chunk by chunk in a thread while the next chunk is read; None for other files."""
    size = os.fstat(f.fileno()).st_size
    buf = np.empty(size, dtype=np.uint8)  # np.empty: no zero-fill of memory about to be overwritten
    mv = memoryview(buf)
    got = f.readinto(mv[: _HASH_AT + 64]) if size else 0
    if got < min(size, _HASH_AT + 64) or bytes(mv[_LEN.size : _HASH_AT]) != _HEAD_START:
        got += _read_into(f, mv[got:])
        if got != size:
            raise FormatError(f"{path} changed while it was read ({got} of {size} bytes)")
        return buf, None
    h = hashlib.sha256(mv[:_HASH_AT])
    h.update(_ZERO_HASH)
    with ThreadPoolExecutor(max_workers=1) as pool:  # one worker: the chunks are hashed in file order
        while got < size:
            n = _read_into(f, mv[got : got + _CHUNK])
            if n == 0:
                break
            pool.submit(h.update, mv[got : got + n])
            got += n
    if got != size:
        raise FormatError(f"{path} changed while it was read ({got} of {size} bytes)")
    return buf, h.hexdigest()


def _read_into(f: BinaryIO, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _load_v2(path: Path, buf: np.ndarray, digest: str) -> tuple[dict[str, torch.Tensor], dict]:
    mv = memoryview(buf)
    (head_len,) = _LEN.unpack_from(mv)
    recorded = bytes(mv[_HASH_AT : _HASH_AT + 64])
    if digest.encode("ascii") != recorded:
        raise FormatError(f"{path} is corrupted or truncated (SHA-256 mismatch over the whole file)")
    # The checksum matched, so what follows only refuses files crafted with a valid checksum.
    if head_len > min(MAX_HEADER_BYTES, len(buf) - _LEN.size):
        raise FormatError(f"{path}: header length {head_len} runs past the end of the file ({len(buf)} bytes)")
    start = _LEN.size + head_len
    header = parse_json(mv[_LEN.size : start], f"{path} header")
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise FormatError(f"{path}: the header is not a safetensors header with __metadata__")
    md = header.pop("__metadata__")
    if md.get("fisherx.format") != str(FORMAT_VERSION):
        raise FormatError(
            f"{path} has fisherx format {md.get('fisherx.format')!r}; this fisherx reads "
            f"{FORMAT_VERSION} (and format 1)"
        )
    if not isinstance(md.get("fisherx.meta"), str):
        raise FormatError(f"{path}: __metadata__ lacks fisherx.meta")
    meta = parse_json(md["fisherx.meta"], f"{path} metadata")
    if not isinstance(meta, dict):
        raise FormatError(f"{path}: the metadata is a {type(meta).__name__}, not a JSON object")
    specs = {}
    for name, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{path}: tensor {name!r} needs exactly dtype, shape and data_offsets, got {e!r:.200}")
        off = e["data_offsets"]
        if not (isinstance(off, list) and len(off) == 2 and all(_is_count(v) for v in off) and off[0] <= off[1]):
            raise FormatError(f"{path}: tensor {name!r} has malformed data_offsets {off!r:.200}")
        specs[name] = (e["dtype"], e["shape"], off[0], off[1] - off[0])
    return _build(path, mv[start:], specs, contiguous_in_offset_order=True), meta


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _dtype_of(path: Path, name: str, code: Any, table: dict) -> torch.dtype:
    dtype = table.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise FormatError(f"{path}: tensor {name!r} has unknown dtype {code!r:.50}")
    return dtype


def _build(
    path: Path, data: memoryview, specs: dict, contiguous_in_offset_order: bool, table: dict | None = None
) -> dict[str, torch.Tensor]:
    """Tensors from (dtype code, shape, offset, nbytes) specs, checked against the data: sizes must match the
    shapes, and the tensors must tile the data exactly (no gaps, no overlaps, nothing left over)."""
    table = table or _FROM_CODE
    pos, out, plan = 0, {}, []
    for name, (code, shape, off, nbytes) in specs.items():
        dtype = _dtype_of(path, name, code, table)
        if not (isinstance(shape, list) and len(shape) <= MAX_DEPTH and all(_is_count(s) for s in shape)):
            raise FormatError(f"{path}: tensor {name!r} has malformed shape {shape!r:.200}")
        need = math.prod(shape) * dtype.itemsize
        if need != nbytes:
            raise FormatError(
                f"{path}: tensor {name!r} of shape {shape} and dtype {dtype} needs {need} bytes, but "
                f"its offsets span {nbytes}"
            )
        plan.append((off, nbytes, name, dtype, shape))
    for off, nbytes, name, _, _ in sorted(plan, key=lambda p: (p[0], p[1])) if contiguous_in_offset_order else plan:
        if off != pos:
            raise FormatError(
                f"{path}: tensor {name!r} starts at data byte {off}, expected {pos} (the tensors must "
                "tile the data without gaps or overlaps)"
            )
        pos += nbytes
    if pos != len(data):
        raise FormatError(
            f"{path} is truncated or has trailing bytes: the tensors span {pos} data bytes, the file has {len(data)}"
        )
    for off, nbytes, name, dtype, shape in plan:
        if nbytes == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        # One storage per tensor over its own bytes (no copy): some torch code (set_rng_state, ...) reads a
        # tensor's storage from its start, so views at an offset into one shared storage would be unsafe.
        chunk = torch.frombuffer(data, dtype=torch.uint8, count=nbytes, offset=off)
        if off % dtype.itemsize:  # a foreign layout: copy rather than view unaligned memory
            chunk = chunk.clone()
        out[name] = chunk.view(dtype).reshape(shape)
    return {name: out[name] for name in specs}


def _load_v1(path: Path, buf: np.ndarray) -> tuple[dict[str, torch.Tensor], dict]:
    # Format 1 has its checksum over the tensor bytes only: header damage is caught by the structural checks
    # below, but a flipped byte inside a name or a metadata string cannot be detected (format 2 fixes that).
    if len(buf) < _PREFIX.size:
        raise FormatError(f"{path} is truncated (shorter than the format-1 prefix)")
    _, version, head_len = _PREFIX.unpack_from(buf)
    if version != 1:
        raise FormatError(
            f"{path} has fisherx format version {version}; this fisherx reads versions 1 and {FORMAT_VERSION}"
        )
    if head_len > len(buf) - _PREFIX.size:
        raise FormatError(f"{path} is truncated (header runs past the end of the file)")
    mv = memoryview(buf)
    header = parse_json(mv[_PREFIX.size : _PREFIX.size + head_len], f"{path} header")
    keys = {"tensors", "meta", "data_nbytes", "data_sha256"}
    if not isinstance(header, dict) or set(header) != keys:
        raise FormatError(f"{path}: the format-1 header must have exactly the keys {sorted(keys)}")
    data = mv[_PREFIX.size + head_len :]
    if len(data) != header["data_nbytes"]:
        raise FormatError(
            f"{path} is truncated or has trailing bytes: {len(data)} data bytes, expected {header['data_nbytes']!r:.40}"
        )
    if hashlib.sha256(data).hexdigest() != header["data_sha256"]:
        raise FormatError(f"{path} is corrupted (checksum mismatch)")
    if not isinstance(header["meta"], dict) or not isinstance(header["tensors"], list):
        raise FormatError(f"{path}: the format-1 header's meta must be an object and tensors a list")
    specs = {}
    for i, e in enumerate(header["tensors"]):
        if not isinstance(e, dict) or set(e) != {"name", "dtype", "shape", "offset", "nbytes"}:
            raise FormatError(f"{path}: tensor entry {i} is malformed")
        if not isinstance(e["name"], str) or e["name"] in specs:
            raise FormatError(f"{path}: tensor entry {i} has a bad or repeated name {e['name']!r:.100}")
        if not (_is_count(e["offset"]) and _is_count(e["nbytes"])):
            raise FormatError(f"{path}: tensor {e['name']!r} has a malformed offset or size")
        specs[e["name"]] = (e["dtype"], e["shape"], e["offset"], e["nbytes"])
    return _build(path, data, specs, contiguous_in_offset_order=False, table=_V1_DTYPES), header["meta"]


# ---------------------------------------------------------------------------------------------------------------
# Nested structures: state dicts, optimiser states, random-number states


def save_tree(path: PathLike, obj: Any, meta: dict | None = None) -> Path:
    """Save a nested structure of dicts, lists, tuples, tensors, numpy arrays and JSON scalars atomically.

    Dict keys may be str, int, float, bool or None (optimiser state dicts use int keys); tuples stay tuples; non-finite
    floats survive. Anything else is refused with the path to the offending value.
    """
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, tensors, "obj", 0)
    return save_tensors(path, tensors, {"tree": tree, "meta": meta if meta is not None else {}})


def load_tree(path: PathLike, with_meta: bool = False):
    """Load what :func:`save_tree` wrote; with ``with_meta`` return ``(obj, meta)``."""
    tensors, header = load_tensors(path)
    if "tree" not in header:
        raise FormatError(f"{path} holds flat tensors, not a saved tree (use load_tensors)")
    if not isinstance(header.get("meta", {}), dict):
        raise FormatError(f"{path}: the tree's metadata is not a JSON object")
    obj = _decode(header["tree"], tensors, path)
    return (obj, header.get("meta", {})) if with_meta else obj


def _encode(obj: Any, tensors: dict, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH // 2 - 2:  # each level may take two JSON levels ({"__dict__": [[k, v]]})
        raise TypeError(f"save_tree: {where} nests deeper than {MAX_DEPTH // 2 - 2} levels")
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
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]", depth + 1) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]", depth + 1) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return _encode_dict(obj, tensors, where, depth)
    raise TypeError(f"save_tree: {where} is a {type(obj).__name__}, which cannot be saved without pickle")


def _encode_dict(obj: dict, tensors: dict, where: str, depth: int) -> dict:
    if all(isinstance(k, str) and not k.startswith("__") for k in obj):
        return {k: _encode(v, tensors, f"{where}[{k!r}]", depth + 1) for k, v in obj.items()}
    items = []
    for k, v in obj.items():
        if not (k is None or isinstance(k, (str, int, float, bool))):
            raise TypeError(f"save_tree: {where} has a key of type {type(k).__name__}, which cannot be saved")
        items.append([_encode(k, tensors, where, depth + 1), _encode(v, tensors, f"{where}[{k!r}]", depth + 1)])
    return {"__dict__": items}


_SPECIAL_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _decode(node: Any, tensors: dict, path: PathLike) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors, path) for v in node]
    if not isinstance(node, dict):
        return node
    if any(k.startswith("__") for k in node):
        return _decode_tagged(node, tensors, path)
    return {k: _decode(v, tensors, path) for k, v in node.items()}


_TAGS = ("__tensor__", "__ndarray__", "__float__", "__tuple__", "__dict__")


def _decode_tagged(node: dict, tensors: dict, path: PathLike) -> Any:
    if len(node) != 1 or next(iter(node)) not in _TAGS:
        raise FormatError(f"{path}: the tree has a malformed node with keys {sorted(node)[:5]}")
    if "__tensor__" in node or "__ndarray__" in node:
        key = node.get("__tensor__", node.get("__ndarray__"))
        if not isinstance(key, str) or key not in tensors:
            raise FormatError(f"{path}: the tree refers to a missing tensor {key!r:.40}")
        return tensors[key] if "__tensor__" in node else tensors[key].numpy()
    if "__float__" in node:
        if node["__float__"] not in _SPECIAL_FLOATS:
            raise FormatError(f"{path}: the tree has a malformed special float {node['__float__']!r:.40}")
        return _SPECIAL_FLOATS[node["__float__"]]
    if "__tuple__" in node:
        if not isinstance(node["__tuple__"], list):
            raise FormatError(f"{path}: the tree has a malformed tuple")
        return tuple(_decode(v, tensors, path) for v in node["__tuple__"])
    if "__dict__" in node:
        items = node["__dict__"]
        if not isinstance(items, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in items):
            raise FormatError(f"{path}: the tree has a malformed dict")
        keys = [_decode(k, tensors, path) for k, _ in items]
        if not all(k is None or isinstance(k, (str, int, float, bool)) for k in keys):
            raise FormatError(f"{path}: the tree has a dict key that is not a scalar")
        return {k: _decode(v, tensors, path) for k, (_, v) in zip(keys, items, strict=True)}
