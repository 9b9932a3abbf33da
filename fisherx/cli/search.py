"""``fisherx search``: TA-NAS for one task of a preset against a dictionary of baseline tasks.

    fisherx search --preset digits --target T2 --baselines T0,T1,T3 --dictionary DICT --out OUT

Opens the dictionary DICT (creating it, with the family's architecture and head width, if it does not exist),
solves every baseline named in ``--baselines`` that it lacks (ε-network + FUSE in the general space), then runs
TA-NAS for the target and writes OUT/report.json and OUT/summary.txt. Every stage checkpoints under OUT, so the
same command, rerun after an interruption, resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import FormatError, atomic_write_text
from ..nas.ta_nas import INDEX, SearchBudget, TaskDictionary, add_baseline, ta_nas
from ..tasks import preset
from . import options

NAME = "search"
HELP = "TA-NAS for a preset's task against a dictionary of baseline tasks"
BUDGET = SearchBudget()  # the defaults of the options that make up a SearchBudget


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add(p, "preset")
    p.add_argument("--target", required=True, help="the target task's name in the preset, e.g. T2")
    # The shared --tasks (parsed as a list, as in distances); search takes the FILE.py:NAME form only.
    options.add(
        p,
        "tasks",
        help="FILE.py:NAME / module:NAME naming a list of your own Tasks; --target and "
        "--baselines then name tasks of that list",
    )
    p.add_argument("--dictionary", required=True, help="folder of the baseline dictionary (created if missing)")
    options.add(p, "out", help="output folder: report.json, summary.txt, checkpoints")
    p.add_argument(
        "--baselines",
        type=options.comma_list,
        default=None,
        help="comma-separated preset tasks to solve and add to the dictionary first if missing",
    )
    options.add(p, "data-dir")
    p.add_argument("--arch", default="cnn", help="ε-network architecture of a new dictionary")
    p.add_argument(
        "--eps-epochs",
        type=options.count,
        default=BUDGET.eps_epochs,
        help="training epochs of a new dictionary's ε-networks",
    )
    p.add_argument("--eps-seed", type=int, default=0, help="initialisation seed of a new dictionary's ε-networks")
    options.add(p, "fisher-samples")
    options.add(p, "width", default=BUDGET.width)
    options.add(p, "depth", default=BUDGET.depth)
    p.add_argument(
        "--candidates",
        type=options.count,
        default=BUDGET.candidates,
        help="new candidates per FUSE round (memory ∝ C+1)",
    )
    options.add(p, "rounds", default=BUDGET.rounds)
    p.add_argument(
        "--alternations", type=options.count, default=BUDGET.alternations, help="max weight/α alternations per round"
    )
    p.add_argument(
        "--weight-epochs", type=options.count, default=1, help="passes over the training data per alternation"
    )
    p.add_argument(
        "--alpha-epochs",
        type=options.count,
        default=10,
        help="passes over the validation data per alternation (cheap: cached logits)",
    )
    options.add(p, "batch-size", default=BUDGET.batch_size)
    options.add(p, "lr", default=3e-3)
    p.add_argument("--alpha-lr", type=options.rate, default=0.05, help="Adam learning rate of α")
    p.add_argument(
        "--final-epochs", type=options.count, default=BUDGET.final_epochs, help="epochs of the winner's final training"
    )
    p.add_argument(
        "--compare",
        default="random",
        help="comma-separated comparisons: random (same space, same budget), general (FUSE, all ops); 'none' for none",
    )
    p.add_argument(
        "--checkpoint-every",
        type=options.nonnegative,
        default=50,
        help="also checkpoint every N weight steps inside a round (0: only at round ends)",
    )
    p.add_argument("--grow", action="store_true", help="add the solved target to the dictionary")
    options.add(p, "seed", "max-train-per-label", "task-seed", "device", "quiet")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, FileExistsError, FormatError) as e:
        # Bad input (a foreign dictionary, a search directory of another search, ...): say what, without a trace.
        raise SystemExit(f"fisherx search: {e}") from None


def _run(args: argparse.Namespace) -> int:
    if args.tasks:
        from ..tasks.runfile import load_tasks

        if len(args.tasks) != 1 or ":" not in args.tasks[0]:
            raise SystemExit(
                f"fisherx search: --tasks takes one FILE.py:NAME (or module:NAME) reference, got "
                f"{','.join(args.tasks)!r}; name the preset's tasks with --target and --baselines"
            )
        try:
            tasks = {t.name: t for t in load_tasks(args.tasks[0])}
        except (AttributeError, ImportError, TypeError) as exc:
            raise SystemExit(f"fisherx search: {exc}") from exc
        where = args.tasks[0]
    else:
        tasks = {
            t.name: t for t in preset(args.preset, seed=args.task_seed, max_train_per_label=args.max_train_per_label)
        }
        where = f"preset {args.preset!r}"

    def task(name):
        if name not in tasks:
            raise SystemExit(f"fisherx search: no task {name!r} in {where} (it has {', '.join(tasks)})")
        return tasks[name]

    target = task(args.target)
    baselines = [task(n) for n in args.baselines] if args.baselines else []
    compare = () if args.compare in ("", "none") else tuple(args.compare.split(","))
    progress = False if args.quiet else None
    budget = SearchBudget.pick(vars(args))
    search = dict(
        budget.fuse_options(),
        weight_epochs=args.weight_epochs,
        alpha_epochs=args.alpha_epochs,
        lr=args.lr,
        alpha_lr=args.alpha_lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    path = Path(args.dictionary)
    if (path / INDEX).exists():
        dictionary = TaskDictionary(path)
    else:
        # The family's head width is the largest label count of the preset's tasks, so every task of the preset
        # can later be a target or join the dictionary (and F_ab covers the same parameters as F_bb).
        datas = [t.load(args.data_dir) for t in tasks.values()]
        dictionary = TaskDictionary.create(
            path,
            arch=args.arch,
            head_width=max(d.num_classes for d in datas),
            in_channels=datas[0].in_channels,
            image_size=datas[0].image_size,
            eps_epochs=budget.eps_epochs,
            eps_seed=args.eps_seed,
            exist_ok=True,
        )
    general = budget.general_space()
    out = Path(args.out)
    for b in baselines:
        if b.name not in dictionary and b.name != target.name:
            print(f"solving baseline {b.name} (ε-network + FUSE in the general space)")
            add_baseline(
                dictionary,
                b,
                space=general,
                data_dir=args.data_dir,
                device=args.device,
                out_dir=out / "baselines",
                progress=progress,
                **search,
            )
    report = ta_nas(
        target,
        dictionary,
        compare=compare,
        fisher_samples=args.fisher_samples,
        grow=args.grow,
        data_dir=args.data_dir,
        device=args.device,
        out_dir=out,
        progress=progress,
        **search,
    )
    text = report.summary()
    atomic_write_text(out / "summary.txt", text + "\n")
    print(text)
    print(f"\nwrote {out / 'report.json'} and {out / 'summary.txt'}")
    return 0
