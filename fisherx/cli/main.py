"""The ``fisherx`` command: the parser, the dispatch to one module per subcommand, and ``fisherx info``.

A subcommand is a module of this package with ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``
returning the exit status; adding one is that module plus its line in :data:`COMMANDS`. Options several commands
share are declared once, in :mod:`fisherx.cli.options`.
"""
from __future__ import annotations

import argparse
import platform
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fisherx", description="Diagonal Fisher, task distances and TA-NAS.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print how fisherx was built and what it can use here")
    p.set_defaults(func=_cmd_info)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
