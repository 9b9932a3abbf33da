"""``fisherx distances``: task-distance matrices of a preset's tasks, with table, heatmaps, atlas and intervals.

    fisherx distances --preset digits --archs mlp,cnn --seeds 0,1,2 --out DIR

Runs :func:`fisherx.task_distances` and writes result.json, distances.csv, table.txt, heatmaps.png, atlas.png and
intervals.png to DIR; the cache defaults to DIR/cache, so re-running the command resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..distance import METRICS
from ..distributed import init_from_env, is_main_process
from ..experiments.distances import HEAD_MODES, task_distances
from ..experiments.trust import GATE_ACTIONS
from ..io import atomic_write_text
from ..tasks import preset
from . import options

NAME = "distances"
HELP = "task-distance matrices of a preset's tasks T0-T3 (table, heatmaps, atlas)"
OUTPUT_FILES = ("result.json", "distances.csv", "table.txt", "heatmaps.png", "atlas.png", "intervals.png")


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add(p, "preset", "archs", "seeds")
    options.add(p, "epochs", help="training epochs per network (the papers: 100)")
    options.add(p, "data-dir")
    options.add(p, "out", help="output folder: result.json, distances.csv, table.txt, *.png")
    options.add(p, "cache-dir")
    p.add_argument("--metric", default="ftd", choices=list(METRICS))
    p.add_argument(
        "--head",
        default="shared",
        choices=list(HEAD_MODES),
        help="shared head width for all tasks (default), or refit N_a's head on task b",
    )
    options.add(
        p,
        "tasks",
        help="comma-separated subset of the preset's tasks (e.g. T0,T1,T2), or FILE.py:NAME / "
        "module:NAME naming a list of your own Tasks",
    )
    p.add_argument(
        "--model",
        default=None,
        help="FILE.py:FACTORY / module:FACTORY: your network factory "
        "factory(num_outputs) -> nn.Module, instead of --archs",
    )
    p.add_argument(
        "--config",
        default=None,
        help="a TOML run file: tasks (.npz files, image folders, CIFAR batches "
        "with class subsets), the networks, seeds and settings "
        "(docs/your-tasks.md); its settings win over these options",
    )
    options.add(p, "batch-size", "lr")
    p.add_argument(
        "--epsilon", type=options.epsilon, default=0.1, help="warn when a network's test accuracy < 1 - epsilon"
    )
    options.add(p, "bootstrap")
    p.add_argument(
        "--gates",
        default="warn",
        choices=list(GATE_ACTIONS),
        help="sanity gates (accuracy vs epsilon, collapsed Fisher, d[a,a] = 0): warn, refuse or off",
    )
    options.add(p, "fisher-samples", "max-train-per-label")
    options.add(p, "image-size", help="resize the images to this side (image folders default to 32)")
    options.add(p, "task-seed", "device", "quiet")


def run(args: argparse.Namespace) -> int:
    """Run :func:`task_distances` on a preset and write :data:`OUTPUT_FILES` to ``args.out``."""
    init_from_env(args.device)  # under torchrun: one process group, the units of work spread over the ranks
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    user = _user_run(args)  # --config / --tasks FILE.py:NAME / --model FILE.py:FACTORY
    tasks = user.pop("tasks", None) or _tasks(args)
    settings = dict(
        archs=list(args.archs),
        seeds=list(args.seeds),
        epochs=args.epochs,
        metric=args.metric,
        cache_dir=args.cache_dir or out / "cache",
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        lr=args.lr,
        epsilon=args.epsilon,
        head=args.head,
        fisher_samples=args.fisher_samples,
        device=args.device,
        progress=not args.quiet,
        bootstrap=args.bootstrap,
        gates=args.gates,
    )
    settings.update(user)  # the run file's settings win over the options' defaults
    try:
        result = task_distances(tasks, **settings)
    except (ValueError, TypeError) as exc:  # a bad factory or task family: one line, not a traceback
        raise SystemExit(f"fisherx distances: {exc}") from exc
    if not is_main_process():
        return 0  # rank 0 writes the outputs
    result.to_json(out / "result.json")
    result.to_csv(out / "distances.csv")
    table = result.table()
    atomic_write_text(out / "table.txt", table + "\n")
    result.plot_heatmaps(out / "heatmaps.png")
    result.plot_atlas(out / "atlas.png")
    result.plot_intervals(out / "intervals.png")
    print(table)
    print(f"\nwrote {', '.join(str(out / f) for f in OUTPUT_FILES)}")
    return 0


def _user_spec(args: argparse.Namespace):
    """``--tasks`` when it is a FILE.py:NAME / module:NAME reference (one entry holding a colon), else None."""
    return args.tasks[0] if args.tasks and len(args.tasks) == 1 and ":" in args.tasks[0] else None


def _user_run(args: argparse.Namespace) -> dict:
    """The user's part of a run: a TOML run file's tasks, networks and settings, or tasks and a model factory from
    ``FILE.py:NAME`` references; {} for a preset run."""
    from ..tasks.runfile import load_attr, load_tasks, read_run

    try:
        run = read_run(args.config) if args.config else {}
        if _user_spec(args):
            run["tasks"] = load_tasks(_user_spec(args))
        if args.model:
            run["model"] = load_attr(args.model, "--model")
    except (FileNotFoundError, AttributeError, ImportError, TypeError, ValueError, KeyError) as exc:
        raise SystemExit(f"fisherx distances: {exc}") from exc
    return run


def _tasks(args: argparse.Namespace) -> list:
    """The preset's tasks (``--tasks``: a subset), their data loaded once so that a data problem is one line."""
    tasks = preset(
        args.preset, seed=args.task_seed, max_train_per_label=args.max_train_per_label, image_size=args.image_size
    )
    if args.tasks:
        unknown = [t for t in args.tasks if t not in {x.name for x in tasks}]
        if unknown:
            raise SystemExit(
                f"fisherx distances: unknown task(s) {', '.join(unknown)} in preset {args.preset} "
                f"(it has {', '.join(t.name for t in tasks)})"
            )
        tasks = [t for t in tasks if t.name in args.tasks]
    try:  # data problems (missing files, wrong layout, unknown class) as one clear line, not a traceback
        for t in tasks:
            t.load(args.data_dir)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise SystemExit(f"fisherx distances: {msg}") from exc
    return tasks
