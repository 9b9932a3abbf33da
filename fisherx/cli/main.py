"""The ``fisherx`` command."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from .. import _ops

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
    parser = argparse.ArgumentParser(prog="fisherx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print how fisherx was built and what it can use here")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("distances", help="task-distance matrices of a preset's tasks T0-T3 (table, heatmaps, atlas)")
    p.add_argument("--preset", default="digits", help="digits (built in), mnist, cifar10, cifar100 or imagenet")
    p.add_argument("--archs", default="cnn", help="comma-separated: vgg16,resnet18,densenet121,cnn,mlp")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated network seeds (mean ± std over them)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per network (the papers: 100)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's files (not needed for digits)")
    p.add_argument("--out", required=True, help="output folder: result.json, distances.csv, table.txt, *.png")
    p.add_argument("--cache-dir", default=None, help="cache of networks and Fishers (default OUT/cache)")
    p.add_argument("--metric", default="ftd", choices=["ftd", "logdet", "cosine"])
    p.add_argument("--head", default="shared", choices=["shared", "refit"],
                   help="shared head width for all tasks (default), or refit N_a's head on task b")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the preset's tasks (e.g. T0,T1,T2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epsilon", type=float, default=0.1, help="warn when a network's test accuracy < 1 - epsilon")
    p.add_argument("--bootstrap", type=int, default=0,
                   help="bootstrap replicates per Fisher over the test samples: intervals and P(closest) (0: none)")
    p.add_argument("--gates", default="warn", choices=["warn", "refuse", "off"],
                   help="sanity gates (accuracy vs epsilon, collapsed Fisher, d[a,a] = 0): warn, refuse or off")
    p.add_argument("--fisher-samples", type=int, default=None, help="at most this many test samples per Fisher")
    p.add_argument("--max-train-per-label", type=int, default=None, help="cap training samples per label")
    p.add_argument("--image-size", type=int, default=None, help="resize images (image folders default to 32)")
    p.add_argument("--task-seed", type=int, default=0, help="seed of the balanced draw and validation split")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_distances)
    from . import search as nas_cli

    p = sub.add_parser("search", help="TA-NAS for a preset's task against a dictionary of baseline tasks")
    nas_cli.add_arguments(p)
    p.set_defaults(func=_cmd_search)
    p = sub.add_parser("retrain", help="train and evaluate an architecture from its genotype JSON file")
    nas_cli.add_retrain_arguments(p)
    p.set_defaults(func=_cmd_retrain)
    from . import reproduce as reproduce_cli

    p = sub.add_parser("reproduce", help="the papers' experiments with their claims checked (claims.json, table)")
    reproduce_cli.add_arguments(p)
    p.set_defaults(func=lambda args: reproduce_cli.run(args))
    from ..experiments import demo

    p = sub.add_parser("demo", help="the papers' pipeline end to end on built-in data (~10 min on a 2-core CPU)")
    demo.add_arguments(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def _cmd_distances(args: argparse.Namespace) -> int:
    from ..experiments.distances import distances_command

    return distances_command(args)


def _cmd_search(args: argparse.Namespace) -> int:
    from . import search as nas_cli

    return nas_cli.run(args)


def _cmd_retrain(args: argparse.Namespace) -> int:
    from . import search as nas_cli

    return nas_cli.run_retrain(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..experiments import demo

    return demo.command(args, argv=args.argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
