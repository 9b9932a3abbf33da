"""The one idiom of fisherx's tables: layer rules, metrics, NAS operations, data sources and task presets.

A :class:`Registry` is a plain ``dict`` to read (``in``, iteration over the names, ``", ".join(...)``), plus
:meth:`Registry.register`, which refuses to overwrite an entry unless asked (so a typo cannot silently replace a
built-in) and also works as a decorator, and :meth:`Registry.lookup`, whose error names what is known. Adding an
entry is one call next to its code; nothing else needs to learn its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING: Any = object()


def _label(key: Any) -> str:
    return key.__name__ if isinstance(key, type) else str(key)


class Registry(dict[K, V]):
    """``what`` names the kind of entry in messages ("metric", "data source")."""

    def __init__(self, what: str, entries: dict[K, V] | None = None) -> None:
        super().__init__(entries or {})
        self.what = what

    def register(self, key: K, entry: V = _MISSING, *, replace: bool = False) -> Any:
        """Add ``entry`` under ``key`` and return it; without ``entry``, a decorator that registers what it
        decorates. An existing key is a ValueError unless ``replace``."""
        if entry is _MISSING:

            def deco(e: V) -> V:
                return self.register(key, e, replace=replace)

            return deco
        if key in self and not replace:
            raise ValueError(f"{self.what} {_label(key)!r} is already registered (pass replace=True to override it)")
        self[key] = entry
        return entry

    def lookup(self, key: K) -> V:
        """The entry of ``key``; a ValueError naming the known keys otherwise."""
        try:
            return self[key]
        except (KeyError, TypeError):
            known = ", ".join(_label(k) for k in self)
            raise ValueError(f"unknown {self.what} {_label(key)!r}; choose one of {known}") from None


def decorator_for(registry: Registry, *keys: Any, replace: bool = False) -> Callable:
    """A decorator registering what it decorates under every key of ``keys`` (a rule for several layer types)."""

    def deco(entry: Any) -> Any:
        for k in keys:
            registry.register(k, entry, replace=replace)
        return entry

    return deco
