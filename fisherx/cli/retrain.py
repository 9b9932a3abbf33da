"""``fisherx retrain``: train and evaluate an exported architecture from its genotype JSON file.

    fisherx retrain --genotype OUT/fuse/fuse_genotype.json --preset digits --task T2 --epochs 20 --out RETRAIN

rebuilds the network from the file alone (its cells and recorded skeleton), trains it from scratch, and writes
RETRAIN/retrain_result.json (accuracy, parameters, cost) and RETRAIN/retrain_weights.fx.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import FormatError
from ..nas.retrain import retrain
from ..tasks import preset
from . import options

NAME = "retrain"
HELP = "train and evaluate an architecture from its genotype JSON file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--genotype", required=True, help="genotype JSON file (e.g. a search's fuse_genotype.json)")
    options.add(p, "preset")
    p.add_argument("--task", required=True, help="the task's name in the preset, e.g. T2")
    options.add(p, "epochs", default=20)
    options.add(p, "out", help="output folder: retrain_result.json, retrain_weights.fx")
    # The file's skeleton, overridden (or given, for a file without a space).
    options.add(p, "width", help="override (or, for a file without a space, give) the skeleton's width")
    options.add(p, "depth", help="override (or give) the skeleton's number of cells")
    options.add(p, "batch-size", default=64)
    options.add(p, "lr", default=3e-3)
    options.add(p, "seed", "data-dir", "max-train-per-label", "task-seed", "device")


def run(args: argparse.Namespace) -> int:
    try:
        tasks = {
            t.name: t for t in preset(args.preset, seed=args.task_seed, max_train_per_label=args.max_train_per_label)
        }
        if args.task not in tasks:
            raise ValueError(f"no task {args.task!r} in preset {args.preset!r} (it has {', '.join(tasks)})")
        res = retrain(
            args.genotype,
            tasks[args.task],
            epochs=args.epochs,
            width=args.width,
            depth=args.depth,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            out_dir=args.out,
            data_dir=args.data_dir,
        )
    except (ValueError, FileNotFoundError, FormatError) as e:
        raise SystemExit(f"fisherx retrain: {e}") from None
    c = res["cost"]["stages"]["final_training"]
    print(
        f"{args.task}: test accuracy {res['test_accuracy']:.4f} (validation {res['val_accuracy']:.4f}), "
        f"{res['params']:,} parameters, {args.epochs} epochs in {c['wall_s']:.1f} s on {res['cost']['device']}"
    )
    print(f"wrote {Path(args.out) / 'retrain_result.json'}")
    return 0
