"""Ordinary mistakes on the command line: one line naming the argument or file, exit 2 for usage and 1 at run
time, no traceback, and nothing started before the check."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

# The module (fisherx.cli re-exports its main() under the same name).
cli_main = importlib.import_module("fisherx.cli.main")

USAGE = [  # (arguments after `fisherx`, what the one line must name)
    (["distances", "--seeds", "a"], "--seeds"),
    (["distances", "--seeds", "0,0"], "--seeds"),
    (["distances", "--epochs", "0"], "--epochs"),
    (["distances", "--lr", "-1"], "--lr"),
    (["distances", "--lr", "nan"], "--lr"),
    (["distances", "--epsilon", "2"], "--epsilon"),
    (["distances", "--epsilon", "-0.5"], "--epsilon"),
    (["distances", "--bootstrap", "-3"], "--bootstrap"),
    (["distances", "--device", "gpu"], "--device"),
    (["distances", "--device", "cuda:7"], "--device"),
    (["distances", "--metric", "euclid"], "--metric"),
    (["demo", "--seeds", "x,y"], "--seeds"),
    (["search", "--target", "T2", "--dictionary", "D", "--lr", "0"], "--lr"),
    (["search", "--target", "T2", "--dictionary", "D", "--candidates", "0"], "--candidates"),
    (["retrain", "--genotype", "g.json", "--task", "T2", "--epochs", "-1"], "--epochs"),
    (["reproduce", "mnist", "--seeds", "1,1"], "--seeds"),
    (["affinity", "--budget", "0"], "--budget"),
]


@pytest.mark.parametrize("argv,names", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors_are_one_line_exit_2(argv, names, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main.main([*argv, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and names in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # refused before any work


def _run(argv, capsys):
    """(exit status, standard error) of one in-process run; a ``SystemExit("message")`` is how Python exits with
    status 1 after printing that message."""
    try:
        code = cli_main.main(argv)
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        return 1, capsys.readouterr().err + exc.code
    return code, capsys.readouterr().err


def test_unknown_preset_and_architecture_are_one_line_exit_1(tmp_path, capsys):
    for argv, names in ((["--preset", "nope"], "nope"), (["--archs", "resnet99"], "resnet99")):
        code, err = _run(["distances", *argv, "--epochs", "1", "--out", str(tmp_path / "o")], capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1 and names in err, err


def test_an_output_path_under_a_file_is_named(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _run(["distances", "--epochs", "1", "--out", str(blocker / "out")], capsys)
    assert code == 1 and "--out" in err and str(blocker / "out") in err and len(err.strip().splitlines()) == 1


def test_a_missing_plotting_library_is_found_before_any_work(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(cli_main.importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    code, err = _run(["distances", "--epochs", "1", "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "matplotlib" in err and "fisherx[plot]" in err
    assert not list((tmp_path / "o").glob("*"))  # nothing was computed or written
