"""``fisherx affinity``: brute-force transfer affinity beside the FTD on a pixel-to-pixel task family.

    fisherx affinity --preset pixel-digits --out OUT [--seeds 0,1,2] [--source-epochs 10] [--budget 2]

Trains the autoencoder ε-network on every task, takes every network's Fisher on every task (the FTD matrix),
fine-tunes every network on every task for ``--budget`` epochs and trains one network per task from scratch on
the same budget (the affinity matrices), then writes OUT/affinity.json (the per-seed FTD, affinity and loss
matrices, the agreement per target, the fine-tuning comparison, the cost), OUT/table.txt and OUT/matrices.png,
OUT/cost.png. Every piece is cached under ``--cache-dir`` (default OUT/cache): rerun after an interruption and it
resumes.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="pixel-digits", help="pixel-digits (built in), pixel-mnist, or taskonomy "
                   "(your folders of input/target pairs under --data-dir)")
    p.add_argument("--out", required=True, help="output folder: affinity.json, table.txt, matrices.png, cost.png")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the preset's tasks")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (intervals over them)")
    p.add_argument("--source-epochs", type=int, default=10, help="training epochs of every source network")
    p.add_argument("--budget", type=int, default=2, help="fine-tuning (and from-scratch) epochs per target")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--affinity", default="ahp", choices=["ahp", "gain"],
                   help="the affinity in table.txt and the figure (affinity.json holds both)")
    p.add_argument("--fisher-samples", type=int, default=None, help="at most this many test samples per Fisher")
    p.add_argument("--max-train-per-label", type=int, default=None,
                   help="at most this many training images per source class")
    p.add_argument("--image-size", type=int, default=None, help="resize the images to this side")
    p.add_argument("--data-dir", default=None, help="folder of the dataset's files (taskonomy: one folder per task)")
    p.add_argument("--cache-dir", default=None, help="cache of networks, Fishers and fine-tunes (default OUT/cache)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"fisherx affinity: {what} must be comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..tasks.pixel import pixel_preset
    from ..transfer import report_text, transfer_affinity, write_report

    tasks = pixel_preset(args.preset, max_train_per_label=args.max_train_per_label, image_size=args.image_size,
                         data_dir=args.data_dir)
    if args.tasks:
        wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
        known = {t.name: t for t in tasks}
        missing = [w for w in wanted if w not in known]
        if missing:
            raise SystemExit(f"fisherx affinity: unknown task(s) {', '.join(missing)} in preset {args.preset!r}; "
                             f"it has {', '.join(known)}")
        tasks = [known[w] for w in wanted]
    out = Path(args.out)
    result = transfer_affinity(tasks, seeds=_ints(args.seeds, "--seeds"), source_epochs=args.source_epochs,
                               budget=args.budget, batch_size=args.batch_size, lr=args.lr,
                               fisher_samples=args.fisher_samples, data_dir=args.data_dir,
                               cache_dir=args.cache_dir or out / "cache", device=args.device,
                               progress=not args.quiet)
    paths = write_report(result, out, args.affinity)
    print(report_text(result, args.affinity), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
