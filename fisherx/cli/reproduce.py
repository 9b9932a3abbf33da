"""``fisherx reproduce``: the papers' experiments with their claims checked (fisherx.experiments.reproduce).

    fisherx reproduce mnist --seeds 0,1,2,3,4 --out OUT            # claims.json, claims.md, tables.txt
    fisherx reproduce mnist --size paper --device cuda --out OUT    # VGG-16/ResNet-18/DenseNet-121, 10 seeds
    fisherx reproduce nas --seeds 0,1,2 --search-seeds 0,1,2 --out OUT   # TA-NAS vs random search, paired

``cifar10``, ``cifar100`` and ``imagenet`` need ``--data-dir``. Everything caches under OUT: a rerun resumes.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from . import options

NAME = "reproduce"
HELP = "the papers' experiments with their claims checked (claims.json, table)"
NAMES = ("mnist", "digits", "cifar10", "cifar100", "imagenet", "nas")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=NAMES, help="the experiment: a data set's T0-T3 claims, or nas (TA-NAS vs random)")
    options.add(p, "out")  # claims.json, claims.md, tables.txt; cache/
    options.add(p, "seeds", default=None)  # default: the size's
    p.add_argument(
        "--size",
        default="default",
        choices=["smallest", "default", "paper"],
        help="smallest (tests), default (mlp+cnn, 5 seeds, 4 epochs: ~20-40 min on 2 CPU cores), paper "
        "(VGG-16, ResNet-18, DenseNet-121, 10 seeds, 30 epochs: a GPU)",
    )
    options.add(p, "archs", default=None)  # default: the size's
    p.add_argument(
        "--estimators",
        default=None,
        help="comma-separated Fisher estimators: empirical, mc, minibatch_authors (default: all three)",
    )
    options.add(p, "epochs", default=None)  # default: the size's (the papers: 100)
    options.add(p, "bootstrap", default=None)  # default: the size's
    p.add_argument(
        "--protocol",
        default=None,
        choices=["papers", "full"],
        help="papers (default: balanced train and test sets) or full (the full test split)",
    )
    options.add(
        p,
        "cache-dir",
        help="cache of networks and Fishers (default OUT/cache; share one between runs of other architectures or "
        "estimators)",
    )
    options.add(p, "data-dir", "max-train-per-label")
    p.add_argument("--search-seeds", type=options.int_list, default=(0, 1, 2), help="nas: comma-separated search seeds")
    p.add_argument("--target", default="T2", help="nas: the target task (digits preset)")
    options.add(p, "device", "quiet")


def run(args: argparse.Namespace) -> int:
    from ..experiments import reproduce as rp
    from ..io import atomic_write_text

    out = Path(args.out)
    seeds = tuple(args.seeds) if args.seeds else None
    if args.name == "nas":
        cfg = replace(
            rp.NAS_SIZES[args.size],
            target=args.target,
            eps_seeds=seeds or (0, 1, 2),
            search_seeds=tuple(args.search_seeds),
            max_train_per_label=args.max_train_per_label or rp.NAS_SIZES[args.size].max_train_per_label,
        )
        res = rp.nas_comparison(out, cfg, device=args.device, progress=not args.quiet)
        text = rp.nas_comparison_text(res)
        atomic_write_text(out / "nas_comparison.md", text + "\n")
        print(text)
        return 0
    cfg = rp.config_for(
        args.size,
        seeds=seeds,
        max_train_per_label=args.max_train_per_label,
        epochs=args.epochs,
        bootstrap=args.bootstrap,
        protocol=args.protocol,
        archs=tuple(args.archs) if args.archs else None,
        estimators=tuple(args.estimators.split(",")) if args.estimators else None,
    )
    try:
        claims = rp.reproduce(
            args.name,
            out,
            cfg,
            data_dir=args.data_dir,
            device=args.device,
            progress=not args.quiet,
            cache_dir=args.cache_dir,
        )
    except (FileNotFoundError, ImportError, ValueError) as exc:
        raise SystemExit(f"fisherx reproduce {args.name}: {exc}") from exc
    print((out / "claims.md").read_text())
    print(
        f"wrote {out / 'claims.json'}, {out / 'claims.md'}, {out / 'tables.txt'} "
        f"({sum(claims['timings_s'].values()):.0f} s)"
    )
    return 0
