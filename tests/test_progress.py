"""fisherx._progress: a bar on a terminal, one plain line per stage elsewhere, nothing when disabled."""

from __future__ import annotations

import io

from fisherx._progress import note, progress


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


def test_a_named_step_is_one_line_and_the_stage_keeps_its_name():
    out = io.StringIO()
    with progress(total=None, desc="FUSE", unit="round", stream=out) as bar:
        bar.update(2)
        bar.set_description("round 2: 3 candidates")
        bar.set_description("round 2: 3 candidates")  # unchanged: no second line
        bar.update()
    bar.close()  # closing twice writes nothing more
    lines = out.getvalue().splitlines()
    assert lines[0] == "FUSE [2] round 2: 3 candidates"
    assert len(lines) == 2 and lines[1].startswith("FUSE: 3 round in ")


def test_a_stage_inside_another_is_silent_off_a_terminal():
    out = io.StringIO()
    with progress(total=2, desc="task distances", stream=out) as outer:
        outer.set_description("train T0")
        list(progress(range(3), desc="train T0", unit="epoch", stream=out))  # the outer stage already said it
        outer.update(2)
    assert out.getvalue().splitlines()[0] == "task distances [0/2] train T0"
    assert len(out.getvalue().splitlines()) == 2
    after = io.StringIO()
    list(progress(range(1), desc="next", stream=after))  # the outer one is closed: a new stage speaks again
    assert after.getvalue().startswith("next: 1/1 step in ")


def test_note_is_a_plain_line_and_plain_false_is_terminal_only():
    out = io.StringIO()
    note("TA-NAS: the closest baseline is T0", stream=out)
    note("not shown", enabled=False, stream=out)
    list(progress(range(2), desc="fisher_diag", plain=False, stream=out))
    assert out.getvalue() == "TA-NAS: the closest baseline is T0\n"


def test_disabled_is_silent_and_terminal_draws_a_bar():
    out = io.StringIO()
    list(progress(range(3), desc="x", enabled=False, stream=out))
    assert out.getvalue() == ""
    tty = _Tty()
    list(progress(range(3), desc="bar", stream=tty))
    assert "bar" in tty.getvalue() and "\r" in tty.getvalue()  # tqdm redraws in place on a terminal
