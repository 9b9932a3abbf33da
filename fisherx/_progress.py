"""Progress reporting for every long stage of fisherx, through one helper.

On a terminal a stage is a tqdm bar. Anywhere else (a log file, CI, a pipe) tqdm's ``\\r`` redraws and escape
sequences would pile up in the log, so a stage writes plain lines instead: one when a step names itself
(:meth:`Progress.set_description`) and one when the stage ends, saying how many steps it did and how long it took.
Off a terminal only the outermost open stage writes: a stage run inside another (a network trained within a task
distance run) would repeat what the outer one already says. ``enabled=False`` silences both; ``plain=False``
keeps the terminal bar but writes nothing elsewhere (for library calls made in a loop, such as
:func:`fisherx.fisher_diag`).
"""

from __future__ import annotations

import sys
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


# The plain-line stages now open; a stage opened while one is open is silent off a terminal.
_OPEN_PLAIN: weakref.WeakSet = weakref.WeakSet()


class Progress:
    """One stage's progress: ``update(n)``, ``set_description(text)``, ``close()``; also a context manager and,
    given an iterable, an iterator over it.

    ``desc`` names the stage. On a terminal it draws a tqdm bar titled ``desc`` (``"desc · text"`` after
    ``set_description(text)``). Otherwise ``set_description(text)`` writes ``"<desc> [<n>/<total>] <text>"`` and
    :meth:`close` writes ``"<desc>: <n>[/<total>] <unit> in <seconds> s"`` to ``stream`` (standard error by
    default). ``enabled``: ``None`` or ``True`` report as above, ``False`` writes nothing.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "step",
        initial: int = 0,
        enabled: bool | None = True,
        plain: bool = True,
        leave: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self._iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.name, self.unit, self.n = total, desc, unit, initial
        self.desc = desc
        self._stream = stream if stream is not None else sys.stderr
        on = enabled is not False
        self._bar: Any = None
        self._plain = on and plain and not _is_terminal(self._stream) and not _OPEN_PLAIN
        if self._plain:
            _OPEN_PLAIN.add(self)
        self._start = time.perf_counter()
        self._closed = False
        if on and _is_terminal(self._stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=self._stream)

    def _count(self) -> str:
        return f"{self.n}/{self.total}" if self.total is not None else str(self.n)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_description(self, text: str) -> None:
        """Name the step now running (shown in the bar, or written as one line off a terminal)."""
        if text == self.desc:
            return
        self.desc = text
        if self._bar is not None:
            self._bar.set_description(f"{self.name} · {text}" if self.name else text)
        elif self._plain:
            head = f"{self.name} [{self._count()}]" if self.name else f"[{self._count()}]"
            print(f"{head} {text}", file=self._stream, flush=True)

    def set_postfix(self, values: dict) -> None:
        """Figures of the current step (loss, accuracy), shown beside the bar on a terminal only."""
        if self._bar is not None:
            self._bar.set_postfix(values)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._plain:
            _OPEN_PLAIN.discard(self)
            seconds = time.perf_counter() - self._start
            print(
                f"{self.name or self.desc}: {self._count()} {self.unit} in {seconds:.1f} s",
                file=self._stream,
                flush=True,
            )

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


def note(text: str, *, enabled: bool | None = True, stream: TextIO | None = None) -> None:
    """One line between stages (which baseline was chosen, where a file went): above any open bar on a terminal,
    a plain line elsewhere; nothing when ``enabled`` is False."""
    if enabled is False:
        return
    stream = stream if stream is not None else sys.stderr
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        tqdm.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)
