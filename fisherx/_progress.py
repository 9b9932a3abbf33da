"""Progress reporting for every long stage of fisherx, through one helper.

On a terminal a stage is a tqdm bar. Anywhere else (a log file, CI, a pipe) tqdm's ``\\r`` redraws and escape
sequences would pile up in the log, so a stage prints one plain line when it ends instead: what it was, how many
steps it did and how long it took. ``enabled=False`` silences both.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """One stage's progress: ``update(n)``, ``set_description(text)``, ``close()``; also a context manager and,
    given an iterable, an iterator over it.

    On a terminal it draws a tqdm bar; otherwise :meth:`close` writes a single line
    ``"<desc>: <n>[/<total>] <unit> in <seconds> s"`` to ``stream`` (standard error by default).
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "step", initial: int = 0, enabled: bool = True, leave: bool = True,
                 stream: TextIO | None = None) -> None:
        self._iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._start = time.perf_counter()
        self._closed = False
        self._bar: Any = None
        if enabled and _is_terminal(self._stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=self._stream)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._enabled:
            count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
            seconds = time.perf_counter() - self._start
            print(f"{self.desc}: {count} {self.unit} in {seconds:.1f} s", file=self._stream, flush=True)

    def __iter__(self) -> Iterator:
        if self._iterable is None:
            raise TypeError("this Progress was made without an iterable; call update() instead")
        try:
            for item in self._iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable | None = None, **kwargs: Any) -> Progress:
    """A :class:`Progress` for one stage (see its docstring for the keywords)."""
    return Progress(iterable, **kwargs)
