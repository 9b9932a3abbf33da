"""``fisherx affinity``: brute-force transfer affinity beside the FTD on a pixel-to-pixel task family.

    fisherx affinity --preset pixel-digits --out OUT [--seeds 0,1,2] [--epochs 10] [--budget 2]

Trains the autoencoder ε-network on every task (``--epochs`` epochs) and takes every network's Fisher on every
task (the FTD matrix); fine-tunes every network on every task for ``--budget`` epochs and trains one network per
task from scratch on the same budget (the affinity matrices); then writes OUT/affinity.json (the per-seed FTD,
affinity and loss matrices, the agreement per target, the fine-tuning comparison, the cost), OUT/table.txt,
OUT/matrices.png and OUT/cost.png. Every piece is cached under ``--cache-dir`` (default OUT/cache): rerun after an
interruption and it resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

NAME = "affinity"
HELP = "transfer affinity (brute force) beside the FTD on a pixel-to-pixel task family"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add(
        p,
        "preset",
        default="pixel-digits",
        help="pixel-digits (built in), pixel-mnist, or taskonomy (your folders of input/target pairs under --data-dir)",
    )
    options.add(p, "out", help="output folder: affinity.json, table.txt, matrices.png, cost.png")
    options.add(p, "tasks", help="comma-separated subset of the preset's tasks (e.g. autoencode,blur,edges)")
    options.add(p, "seeds", default=(0, 1), help="comma-separated seeds, e.g. 0,1,2 (intervals over them)")
    options.add(p, "epochs", help="training epochs of every source network")
    p.add_argument("--budget", type=options.count, default=2, help="fine-tuning (and from-scratch) epochs per target")
    options.add(p, "batch-size", default=64)
    options.add(p, "lr", "fisher-samples", "data-dir", "device", "quiet")
    options.add(p, "max-train-per-label", help="at most this many training images per source class")
    p.add_argument(
        "--affinity",
        default="ahp",
        choices=["ahp", "gain"],
        help="the affinity in table.txt and the figure (affinity.json holds both)",
    )
    options.add(p, "image-size")
    options.add(p, "cache-dir", help="cache of networks, Fishers and fine-tunes (default OUT/cache)")


def run(args: argparse.Namespace) -> int:
    from ..tasks.pixel import pixel_preset
    from ..transfer import report_text, transfer_affinity, write_report

    try:
        tasks = pixel_preset(
            args.preset,
            max_train_per_label=args.max_train_per_label,
            image_size=args.image_size,
            data_dir=args.data_dir,
        )
        if args.tasks:
            known = {t.name: t for t in tasks}
            missing = [w for w in args.tasks if w not in known]
            if missing:
                raise ValueError(
                    f"unknown task(s) {', '.join(missing)} in preset {args.preset!r}; it has {', '.join(known)}"
                )
            tasks = [known[w] for w in args.tasks]
        out = Path(args.out)
        result = transfer_affinity(
            tasks,
            seeds=args.seeds,
            source_epochs=args.epochs,
            budget=args.budget,
            batch_size=args.batch_size,
            lr=args.lr,
            fisher_samples=args.fisher_samples,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir or out / "cache",
            device=args.device,
            progress=not args.quiet,
        )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"fisherx affinity: {e}") from None
    paths = write_report(result, out, args.affinity)
    print(report_text(result, args.affinity), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
