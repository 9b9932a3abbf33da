"""A content-addressed on-disk cache for trained networks and Fishers.

An entry's key is the SHA-256 of the canonical JSON of ``{"format": FORMAT_VERSION, "kind": ..., "config": ...}``,
where the configuration is everything that determines the result (the task, its data's fingerprint, the
architecture, the seed, the training and Fisher settings). Why this is safe to resume from:

- entries are written with :func:`fisherx.io.save_tree` (a safetensors file whose SHA-256 covers all of it;
  temporary file, fsync, rename): after ``kill -9`` an entry is either complete or absent; leftover temporary files
  (``.NAME.*.tmp``) are never read, and are swept by a later write to their folder;
- each entry stores its own kind, format and configuration, compared on every read: an entry of another
  configuration (a hash collision, a hand-copied file) or of another format is reported with a
  :class:`CacheWarning` and recomputed, never used; a corrupted file, or a value the caller's ``check`` refuses,
  likewise — never fatal;
- changing what an entry holds means bumping :data:`FORMAT_VERSION`, which changes every key.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import FormatError, load_tree, save_tree

FORMAT_VERSION = 1
SUFFIX = ".fxc"


class CacheWarning(UserWarning):
    """A cache entry was found but could not be used (corrupted, another configuration or format)."""


def canonical_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, tuples as lists, no NaN) of a configuration."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)


def config_key(kind: str, config: dict) -> str:
    """The hex SHA-256 key of (format version, kind, configuration)."""
    payload = canonical_json({"format": FORMAT_VERSION, "kind": kind, "config": config})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class Cache:
    """Entries under ``root/<kind>/<key[:2]>/<key>.fxc``; ``root=None`` gives a cache that stores nothing.

    ``stats`` counts hits, misses and stores per kind (e.g. ``stats["network.hit"]``).
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.stats: Counter = Counter()

    def path(self, kind: str, config: dict) -> Path | None:
        """Where the entry of (kind, config) lives (whether or not it exists); None without a root."""
        if self.root is None:
            return None
        if not kind.isidentifier():
            raise ValueError(f"cache kind must be an identifier, got {kind!r}")
        key = config_key(kind, config)
        return self.root / kind / key[:2] / f"{key}{SUFFIX}"

    def load(self, kind: str, config: dict, check: Callable[[Any], Any] | None = None) -> Any | None:
        """The stored value of (kind, config), or None (a miss) when there is no usable entry.

        An entry that fails verification (checksum, structure, its recorded kind/format/configuration, or the
        caller's ``check(value)``, e.g. loading a state dict into the model it is for) is never used and never
        fatal: one :class:`CacheWarning` names the file and the reason, and the caller recomputes it.
        """
        p = self.path(kind, config)
        if p is None or not p.is_file():
            self.stats[f"{kind}.miss"] += 1
            return None
        try:
            value, meta = load_tree(p, with_meta=True)
        except (FormatError, OSError) as exc:
            return self._unusable(kind, f"ignoring unreadable cache entry {p} ({exc})")
        expected = {"format": FORMAT_VERSION, "kind": kind, "config": json.loads(canonical_json(config))}
        found = {k: meta.get(k) for k in expected}
        if canonical_json(found) != canonical_json(expected):
            what = [k for k in expected if canonical_json(found[k]) != canonical_json(expected[k])]
            return self._unusable(
                kind, f"ignoring cache entry {p}: its {' and '.join(what)} differ from the ones asked for"
            )
        if check is not None:
            try:
                check(value)
            except Exception as exc:  # whatever the caller's check raises, the entry is unusable, not fatal
                return self._unusable(kind, f"ignoring cache entry {p}: it does not fit ({type(exc).__name__}: {exc})")
        self.stats[f"{kind}.hit"] += 1
        return value

    def _unusable(self, kind: str, why: str) -> None:
        warnings.warn(f"{why}; recomputing it", CacheWarning, stacklevel=3)
        self.stats[f"{kind}.miss"] += 1
        self.stats[f"{kind}.rejected"] += 1
        return None

    def store(self, kind: str, config: dict, value: Any) -> Path | None:
        """Write (kind, config) → value atomically; returns the entry's path (None without a root)."""
        p = self.path(kind, config)
        if p is None:
            return None
        meta = {"format": FORMAT_VERSION, "kind": kind, "config": json.loads(canonical_json(config))}
        save_tree(p, value, meta=meta)
        self.stats[f"{kind}.store"] += 1
        return p

    def get_or_compute(
        self, kind: str, config: dict, compute: Callable[[], Any], check: Callable[[Any], Any] | None = None
    ) -> Any:
        """The cached value (verified as in :meth:`load`), or ``compute()`` stored and returned."""
        value = self.load(kind, config, check)
        if value is None:
            value = compute()
            self.store(kind, config, value)
        return value

    def entries(self, kind: str | None = None) -> list[Path]:
        """The complete entries on disk (temporary files of interrupted writes are not entries)."""
        if self.root is None or not self.root.is_dir():
            return []
        pattern = f"{kind}/*/*{SUFFIX}" if kind else f"*/*/*{SUFFIX}"
        return sorted(p for p in self.root.glob(pattern) if not p.name.startswith("."))
