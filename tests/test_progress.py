"""fisherx._progress: a bar on a terminal, one plain line per stage elsewhere, nothing when disabled."""
from __future__ import annotations

import io

from fisherx._progress import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_not_a_terminal_writes_one_plain_line_per_stage():
    out = io.StringIO()
    items = list(progress(range(5), desc="train T0", unit="epoch", stream=out))
    assert items == [0, 1, 2, 3, 4]
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train T0: 5/5 epoch in ")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_manual_updates_and_context_manager():
    out = io.StringIO()
    with progress(total=None, desc="FUSE", unit="round", stream=out) as bar:
        bar.update(2)
        bar.set_description("FUSE (resumed)")
        bar.update()
    bar.close()  # closing twice writes nothing more
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]
    assert out.getvalue().startswith("FUSE (resumed): 3 round in ")


def test_disabled_is_silent_and_terminal_draws_a_bar():
    out = io.StringIO()
    list(progress(range(3), desc="x", enabled=False, stream=out))
    assert out.getvalue() == ""
    tty = _Tty()
    list(progress(range(3), desc="bar", stream=tty))
    assert "bar" in tty.getvalue() and "\r" in tty.getvalue()  # tqdm redraws in place on a terminal
