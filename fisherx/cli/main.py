"""The ``fisherx`` command: the parser, the dispatch to one module per subcommand, and ``fisherx info``.

A subcommand is a module of this package with ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``
returning the exit status; adding one is that module plus its line in :data:`COMMANDS`. Options several commands
share are declared once, in :mod:`fisherx.cli.options`.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import tempfile
from pathlib import Path

import torch

from .. import _ops
from . import affinity, demo, distances, reproduce, retrain, search

COMMANDS = (
    distances,
    search,
    retrain,
    demo,
    affinity,
    reproduce,
)


def _cmd_info(args: argparse.Namespace) -> int:
    info = _ops.build_info()
    rows = [
        ("fisherx", info["version"]),
        ("CUDA kernels", f"compiled for {info['cuda_archs']}" if info["cuda"] else "not compiled in"),
        ("CUDA usable here", str(_ops.cuda_kernels_usable()) if info["cuda"] else "n/a"),
        ("OpenMP", f"yes, {info['openmp_max_threads']} threads max" if info["openmp"] else "no"),
        ("torch", f"{torch.__version__} ({torch.get_num_threads()} threads)"),
        ("torch CUDA", f"{torch.version.cuda} ({torch.cuda.device_count()} devices)" if torch.version.cuda else "none"),
        ("python", platform.python_version()),
        ("compiler", info["compiler"]),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


class _Parser(argparse.ArgumentParser):
    """A usage error is one line naming the argument (exit 2), not the usage block: ``--help`` has that."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Commands whose results include figures: matplotlib is checked before any work, not found after the whole run.
PLOTTING = {"distances", "demo", "affinity"}


def _preflight(args: argparse.Namespace) -> None:
    """What a command needs from its environment, checked before any work: the output folders can be created and
    written, and matplotlib is there for the commands that draw figures. Raises OSError / ImportError (one line)."""
    for attr in ("out", "cache_dir"):
        folder = getattr(args, attr, None)
        if folder is None:
            continue
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            flag = "--" + attr.replace("_", "-")
            raise OSError(f"{flag} {folder}: cannot write there ({exc.strerror or exc})") from None
    if args.command in PLOTTING and importlib.util.find_spec("matplotlib") is None:
        raise ImportError(f"fisherx {args.command} draws figures and needs matplotlib: pip install 'fisherx[plot]'")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fisherx", description="Diagonal Fisher, task distances and TA-NAS.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print how fisherx was built and what it can use here")
    p.set_defaults(func=_cmd_info)
    for command in COMMANDS:
        p = sub.add_parser(
            command.NAME,
            help=command.HELP,
            description=command.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    # Mistakes found once the command runs (an unknown preset or architecture, a missing or damaged file, a full
    # disk) end in one line naming what is wrong, exit 1; a bug still shows its traceback.
    try:
        _preflight(args)
        return args.func(args)
    except (ValueError, KeyError, OSError, ImportError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"fisherx {args.command}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
