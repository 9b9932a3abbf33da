"""Readers for the on-disk formats of the papers' datasets: MNIST IDX files, CIFAR python batches, image folders.

Every reader names the file it was reading and what it expected there when it refuses something, always with
:class:`fisherx.io.FormatError` (a ``ValueError``): a truncated, damaged or hostile file never escapes as another
exception. (These formats carry no checksum, so a damaged byte inside the pixel data itself cannot be detected.)
"""

from __future__ import annotations

import gzip
import importlib
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from ..io.files import FormatError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")

# IDX type codes (http://yann.lecun.com/exdb/mnist/ "file formats"), mapped to big-endian numpy types.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise FormatError(f"{path}: corrupted gzip stream ({exc})") from exc
    return raw


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array of its declared type and shape."""
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise FormatError(
            f"{path} is not an IDX file: expected 2 zero bytes, a type code "
            f"({', '.join(hex(c) for c in _IDX_TYPES)}) and a dimension count in its first 4 bytes"
        )
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise FormatError(f"{path} is truncated: its header declares {ndim} dimensions")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise FormatError(f"{path} holds {len(body)} data bytes; its header {tuple(shape)} of {dtype} needs {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


# ---------------------------------------------------------------------------------------------------------------
# CIFAR python batches are pickles by nature. We read them with an unpickler that can build nothing but numpy
# arrays (plus plain dicts, lists, strings and numbers, which need no lookup), so a hostile file cannot run code.


def _numpy_core(module: str):
    # numpy 2 moved numpy.core to numpy._core; pickles written by either name the one they knew.
    for name in (module.replace("numpy.core", "numpy._core"), module):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(module)


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes objects at pickle protocol 2
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # latin1 is what numpy needs for arrays pickled by Python 2
        self._path = path

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise FormatError(
                f"{self._path}: refusing to unpickle {module}.{name}; a CIFAR python batch holds only "
                "dicts, lists, strings and numpy arrays"
            )
        if module == "_codecs":
            import codecs

            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        return getattr(_numpy_core(module), name)

    def persistent_load(self, pid):
        raise FormatError(f"{self._path}: refusing a pickle with persistent references")


def read_cifar_pickle(path: Path | str) -> dict:
    """Load one CIFAR python batch with the restricted unpickler; bytes keys become str keys."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(io.BufferedReader(f), path).load()
    except (FileNotFoundError, FormatError):
        raise
    except (OSError, MemoryError) as exc:
        raise FormatError(f"{path} cannot be read as a CIFAR python batch ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # the unpickler's failures on damaged input have no common type (struct, value, ...)
        raise FormatError(f"{path} is not a readable CIFAR python batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a pickled dict (a CIFAR python batch), found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def cifar_images(batch: dict, path: Path, key: str = "data") -> np.ndarray:
    """The batch's images as uint8 (N, 3, 32, 32), checking the CIFAR row layout."""
    if key not in batch:
        raise FormatError(
            f"{path}: no {key!r} entry; a CIFAR batch has {key!r} (N × 3072 uint8) and its labels "
            f"(found keys: {', '.join(map(str, batch))})"
        )
    data = batch[key]
    if not isinstance(data, np.ndarray):
        raise FormatError(f"{path}: {key!r} is a {type(data).__name__}; expected an (N, 3072) uint8 array")
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise FormatError(
            f"{path}: {key!r} has shape {data.shape} and dtype {data.dtype}; expected (N, 3072) uint8 "
            "rows of 1024 red, 1024 green and 1024 blue values of a 32×32 image"
        )
    return data.reshape(-1, 3, 32, 32)


def cifar_labels(batch: dict, path: Path, key: str, n: int, num_classes: int) -> np.ndarray:
    """The batch's labels under ``key`` as int64, checked against the image count and the class count."""
    if key not in batch:
        raise FormatError(f"{path}: no {key!r} entry (found keys: {', '.join(map(str, batch))})")
    raw = batch[key]
    if not isinstance(raw, (list, np.ndarray)) or (
        isinstance(raw, list) and not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
    ):
        raise FormatError(f"{path}: {key!r} must be a list of integer labels, got {type(raw).__name__}")
    try:
        labels = np.asarray(raw, dtype=np.int64).reshape(-1)
    except (OverflowError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: {key!r} does not hold integer labels ({exc})") from None
    if labels.shape[0] != n:
        raise FormatError(f"{path}: {labels.shape[0]} labels in {key!r} for {n} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise FormatError(
            f"{path}: labels in {key!r} must lie in [0, {num_classes}); found {labels.min()}..{labels.max()}"
        )
    return labels


def read_image(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size): RGB, shorter side resized to ``size``, then centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise FormatError(f"{path}: not a readable image ({exc})") from exc


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name so that loading order is deterministic."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
