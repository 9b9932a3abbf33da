"""fisherx.cli: one parser per subcommand module, shared options declared once with one meaning."""

from __future__ import annotations

import argparse

import pytest

from fisherx.cli import build_parser, options
from fisherx.cli import main as cli_main
from fisherx.cli.main import COMMANDS


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_seeds_is_a_list_in_every_command():
    parser = build_parser()
    assert parser.parse_args(["distances", "--out", "x", "--seeds", "0,3"]).seeds == (0, 3)
    assert parser.parse_args(["demo", "--seeds", "4"]).seeds == (4,)  # seed number 4, not "4 seeds"
    assert parser.parse_args(["demo", "--seeds", "0,1,2"]).seeds == (0, 1, 2)
    assert parser.parse_args(["demo"]).seeds is None  # the size's own seeds


@pytest.mark.parametrize("bad", ["0,x", ",", "1.5"])
def test_a_bad_seed_list_is_one_clear_error(bad, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distances", "--out", "x", "--seeds", bad])
    assert "--seeds: expected comma-separated integers" in capsys.readouterr().err


def test_shared_options_mean_the_same_in_every_command():
    """A shared flag has one help text (its meaning) wherever it appears; only its default may differ."""
    seen: dict = {}
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            flag = action.option_strings[-1] if action.option_strings else None
            if flag and flag[2:] in options.OPTIONS:
                seen.setdefault(flag, {})[name] = (action.help, action.type)
    assert {"--preset", "--device", "--out", "--epochs", "--lr", "--seeds", "--quiet", "--data-dir"} <= set(seen)
    for flag, per_command in seen.items():
        types = {t for _, t in per_command.values()}
        assert len(types) == 1, f"{flag} is parsed differently across commands: {per_command}"
    assert seen["--seeds"].keys() >= {"distances", "demo"}


def test_every_command_module_is_registered_with_its_parts():
    names = set(_subparsers(build_parser()))
    assert names == {"info"} | {c.NAME for c in COMMANDS}
    for c in COMMANDS:
        assert callable(c.add_arguments) and callable(c.run) and c.HELP


def test_unknown_shared_option_names_its_home():
    with pytest.raises(KeyError, match="fisherx/cli/options.py"):
        options.add(argparse.ArgumentParser(), "no-such-option")


def test_info_runs(capsys):
    assert cli_main(["info"]) == 0
    assert "fisherx" in capsys.readouterr().out
