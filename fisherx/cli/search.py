"""``fisherx search``: TA-NAS for one task of a preset against a dictionary of baseline tasks; ``fisherx retrain``:
train and evaluate an exported architecture from its JSON file.

    fisherx search --preset digits --target T2 --baselines T0,T1,T3 --dictionary DICT --out OUT

Opens the dictionary DICT (creating it, with the family's architecture and head width, if it does not exist),
solves every baseline named in ``--baselines`` that it lacks (ε-network + FUSE in the general space), then runs
TA-NAS for the target and writes OUT/report.json and OUT/summary.txt. Every stage checkpoints under OUT, so the
same command, rerun after an interruption, resumes.

    fisherx retrain --genotype OUT/fuse/fuse_genotype.json --preset digits --task T2 --epochs 20 --out RETRAIN

rebuilds the network from the file alone (its cells and recorded skeleton), trains it from scratch, and writes
RETRAIN/retrain_result.json (accuracy, parameters, cost) and RETRAIN/retrain_weights.fx.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="digits", help="digits (built in), mnist, cifar10, cifar100 or imagenet")
    p.add_argument("--target", required=True, help="the target task's name in the preset, e.g. T2")
    p.add_argument("--dictionary", required=True, help="folder of the baseline dictionary (created if missing)")
    p.add_argument("--out", required=True, help="output folder: report.json, summary.txt, checkpoints")
    p.add_argument("--baselines", default=None,
                   help="comma-separated preset tasks to solve and add to the dictionary first if missing")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's files (not needed for digits)")
    p.add_argument("--arch", default="cnn", help="ε-network architecture of a new dictionary")
    p.add_argument("--eps-epochs", type=int, default=10, help="training epochs of a new dictionary's ε-networks")
    p.add_argument("--eps-seed", type=int, default=0, help="initialisation seed of a new dictionary's ε-networks")
    p.add_argument("--fisher-samples", type=int, default=None, help="at most this many test samples per Fisher")
    p.add_argument("--width", type=int, default=8, help="channels of the first cells (even)")
    p.add_argument("--depth", type=int, default=3, help="number of cells")
    p.add_argument("--candidates", type=int, default=3, help="new candidates per FUSE round (memory ∝ C+1)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--alternations", type=int, default=10, help="max weight/α alternations per round")
    p.add_argument("--weight-epochs", type=int, default=1, help="passes over the training data per alternation")
    p.add_argument("--alpha-epochs", type=int, default=10,
                   help="passes over the validation data per alternation (cheap: cached logits)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of the candidates' weights")
    p.add_argument("--alpha-lr", type=float, default=0.05, help="Adam learning rate of α")
    p.add_argument("--final-epochs", type=int, default=20, help="epochs of the winner's final training")
    p.add_argument("--compare", default="random",
                   help="comma-separated comparisons: random (same space, same budget), general (FUSE, all ops); "
                        "'none' for none")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="also checkpoint every N weight steps inside a round (0: only at round ends)")
    p.add_argument("--grow", action="store_true", help="add the solved target to the dictionary")
    p.add_argument("--seed", type=int, default=0, help="seed of the searches")
    p.add_argument("--max-train-per-label", type=int, default=None, help="cap training samples per label")
    p.add_argument("--task-seed", type=int, default=0, help="seed of the balanced draw and validation split")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..io import FormatError

    try:
        return _run(args)
    except (ValueError, FileNotFoundError, FileExistsError, FormatError) as e:
        # Bad input (a foreign dictionary, a search directory of another search, ...): say what, without a trace.
        raise SystemExit(f"fisherx search: {e}") from None


def _run(args: argparse.Namespace) -> int:
    from ..io import atomic_write_text
    from ..tasks import preset
    from ..nas.space import SearchSpace
    from ..nas.ta_nas import INDEX, TaskDictionary, add_baseline, ta_nas

    tasks = {t.name: t for t in preset(args.preset, seed=args.task_seed,
                                       max_train_per_label=args.max_train_per_label)}

    def task(name):
        if name not in tasks:
            raise SystemExit(f"fisherx search: no task {name!r} in preset {args.preset!r} (it has {', '.join(tasks)})")
        return tasks[name]

    target = task(args.target)
    baselines = [task(n) for n in args.baselines.split(",")] if args.baselines else []
    compare = () if args.compare in ("", "none") else tuple(args.compare.split(","))
    progress = False if args.quiet else None
    search = dict(candidates=args.candidates, rounds=args.rounds, alternations=args.alternations,
                  weight_epochs=args.weight_epochs, alpha_epochs=args.alpha_epochs, batch_size=args.batch_size,
                  lr=args.lr, alpha_lr=args.alpha_lr, final_epochs=args.final_epochs, seed=args.seed,
                  checkpoint_every=args.checkpoint_every)
    path = Path(args.dictionary)
    if (path / INDEX).exists():
        dictionary = TaskDictionary(path)
    else:
        # The family's head width is the largest label count of the preset's tasks (DESIGN §1), so every task of
        # the preset can later be a target or join the dictionary.
        datas = [t.load(args.data_dir) for t in tasks.values()]
        dictionary = TaskDictionary.create(path, arch=args.arch, head_width=max(d.num_classes for d in datas),
                                           in_channels=datas[0].in_channels, image_size=datas[0].image_size,
                                           eps_epochs=args.eps_epochs, eps_seed=args.eps_seed, exist_ok=True)
    general = SearchSpace.general(width=args.width, depth=args.depth)
    out = Path(args.out)
    for b in baselines:
        if b.name not in dictionary and b.name != target.name:
            print(f"solving baseline {b.name} (ε-network + FUSE in the general space)")
            add_baseline(dictionary, b, space=general, data_dir=args.data_dir, device=args.device,
                         out_dir=out / "baselines", progress=progress, **search)
    report = ta_nas(target, dictionary, compare=compare, fisher_samples=args.fisher_samples, grow=args.grow,
                    data_dir=args.data_dir, device=args.device, out_dir=out, progress=progress, **search)
    text = report.summary()
    atomic_write_text(out / "summary.txt", text + "\n")
    print(text)
    print(f"\nwrote {out / 'report.json'} and {out / 'summary.txt'}")
    return 0


def add_retrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--genotype", required=True, help="genotype JSON file (e.g. a search's fuse_genotype.json)")
    p.add_argument("--preset", default="digits", help="digits (built in), mnist, cifar10, cifar100 or imagenet")
    p.add_argument("--task", required=True, help="the task's name in the preset, e.g. T2")
    p.add_argument("--epochs", type=int, default=20, help="training epochs")
    p.add_argument("--out", required=True, help="output folder: retrain_result.json, retrain_weights.fx")
    p.add_argument("--width", type=int, default=None, help="override (or, for a file without a space, give) the "
                                                           "skeleton's width")
    p.add_argument("--depth", type=int, default=None, help="override (or give) the skeleton's number of cells")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's files (not needed for digits)")
    p.add_argument("--max-train-per-label", type=int, default=None, help="cap training samples per label")
    p.add_argument("--task-seed", type=int, default=0, help="seed of the balanced draw and validation split")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def run_retrain(args: argparse.Namespace) -> int:
    from ..io import FormatError
    from ..tasks import preset
    from ..nas.retrain import retrain

    try:
        tasks = {t.name: t for t in preset(args.preset, seed=args.task_seed,
                                           max_train_per_label=args.max_train_per_label)}
        if args.task not in tasks:
            raise ValueError(f"no task {args.task!r} in preset {args.preset!r} (it has {', '.join(tasks)})")
        res = retrain(args.genotype, tasks[args.task], epochs=args.epochs, width=args.width, depth=args.depth,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device, out_dir=args.out,
                      data_dir=args.data_dir)
    except (ValueError, FileNotFoundError, FormatError) as e:
        raise SystemExit(f"fisherx retrain: {e}") from None
    c = res["cost"]["stages"]["final_training"]
    print(f"{args.task}: test accuracy {res['test_accuracy']:.4f} (validation {res['val_accuracy']:.4f}), "
          f"{res['params']:,} parameters, {args.epochs} epochs in {c['wall_s']:.1f} s on {res['cost']['device']}")
    print(f"wrote {Path(args.out) / 'retrain_result.json'}")
    return 0
