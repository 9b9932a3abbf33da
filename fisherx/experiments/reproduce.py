"""The papers' experiments, reproduced: task-distance matrices under the papers' protocol for several
architectures, seeds and Fisher estimators, and each of the papers' claims checked against them.

The claims (d[a, b]: source a = row, target b = column; TA-NAS picks a* = argmin_a d[a, b]):

1. T0 and T1 are each other's closest task: argmin_{a≠T1} d[a, T1] = T0 and argmin_{a≠T0} d[a, T0] = T1.
2. T3 is the closest task to T2: argmin_{a≠T2} d[a, T2] = T3.

For one matrix, a claim's **margin** is the smallest, over its (target, claimed source) pairs, of the runner-up's
distance minus the claimed source's: positive when the claim holds in that matrix (similarities: the sign flips).
Per (estimator, architecture) cell: the seeds in which it holds, the mean margin with a 95% interval (Student t over
seeds; the bootstrap's percentile interval with one seed), P(closest) of every claimed source over seeds ×
bootstrap replicates, and a verdict: ``holds`` (interval above 0), ``fails`` (below 0), ``within noise`` (it
straddles 0). The claim's overall verdict is ``holds`` / ``fails`` when every cell says so, else ``within noise``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..io import atomic_write_text
from ..nas.ta_nas import SearchBudget, TaskDictionary, add_baseline, ta_nas, train_eps_network
from . import demo as _demo
from . import trust as _trust

VERDICTS = ("holds", "within noise", "fails")
ESTIMATORS = ("empirical", "mc", "minibatch_authors")
ESTIMATOR_TEXT = {
    "empirical": "per-sample empirical Fisher (the papers' definition)",
    "mc": "Monte-Carlo Fisher (labels drawn from the network's softmax)",
    "minibatch_authors": "the authors' code: squared batch-mean gradients, batch 10, first axis averaged",
}
EXPERIMENTS = ("mnist", "digits", "cifar10", "cifar100", "imagenet")


@dataclass(frozen=True)
class Claim:
    """A claim of the papers: for every (target, source) in ``pairs``, source is the closest task to target."""

    name: str
    text: str
    pairs: tuple


PAPER_CLAIMS = (
    Claim("T0<->T1", "T0 and T1 are each other's closest task", (("T1", "T0"), ("T0", "T1"))),
    Claim("T3->T2", "T3 is the closest task to T2", (("T2", "T3"),)),
)


def claim_margins(d, names, claim: Claim, metric: str = "ftd") -> np.ndarray:
    """Margins of ``claim`` in every matrix of ``d`` (..., K, K): min over its pairs (b, a) of
    min_{c ∉ {a, b}} d[c, b] − d[a, b] (for cosine similarity, d[a, b] − max_{c ∉ {a, b}} d[c, b])."""
    d = np.asarray(d, dtype=np.float64)
    idx = {n: i for i, n in enumerate(names)}
    out = None
    for tgt, src in claim.pairs:
        if tgt not in idx or src not in idx:
            raise ValueError(f"claim {claim.name!r} names {tgt!r} and {src!r}; the tasks are {', '.join(names)}")
        b, a = idx[tgt], idx[src]
        others = [c for c in range(len(names)) if c not in (a, b)]
        if not others:
            raise ValueError(f"claim {claim.name!r} needs a third task to compare with")
        col = d[..., :, b]
        if metric == "cosine":
            m = col[..., a] - col[..., others].max(axis=-1)
        else:
            m = col[..., others].min(axis=-1) - col[..., a]
        out = m if out is None else np.minimum(out, m)
    return out


def _verdict(lo: float, hi: float) -> str:
    return "holds" if lo > 0 else "fails" if hi < 0 else "within noise"


def claim_cell(result, arch: str, claim: Claim) -> dict:
    """One (result, architecture) cell of a claim: per-seed margins, held count, interval, P(closest), verdict."""
    names, level = list(result.task_names), result.level
    per_seed = claim_margins(result.distances[arch], names, claim, result.metric)
    draws = result.draws(arch)
    draw_margins = claim_margins(draws, names, claim, result.metric)
    if per_seed.size >= 2:
        lo, hi = _trust.seed_interval(per_seed, level)
        how = "Student t over seeds"
    elif draws.shape[0] > per_seed.size:
        lo, hi = _trust.percentile_interval(draw_margins, level)
        how = "bootstrap percentile (one seed)"
    else:
        lo = hi = float(per_seed[0])
        how = "none (one seed, no bootstrap)"
    prob = result.closest_probability(arch)
    p = {f"{src}->{tgt}": float(prob[names.index(src), names.index(tgt)]) for tgt, src in claim.pairs}
    return {
        "arch": arch,
        "seeds": list(result.seeds),
        "margins": per_seed.tolist(),
        "held": int((per_seed > 0).sum()),
        "of": int(per_seed.size),
        "margin_mean": float(per_seed.mean()),
        "interval": [float(lo), float(hi)],
        "interval_kind": how,
        "level": level,
        "p_closest": p,
        "p_joint": float((draw_margins > 0).mean()),
        "draws": int(draws.shape[0]),
        "closest": {tgt: result.closest(arch)[tgt] for tgt, _ in claim.pairs},
        "verdict": _verdict(float(lo), float(hi)),
    }


def evaluate_claims(results: dict, claims=PAPER_CLAIMS) -> dict:
    """Every claim over every (estimator, architecture) of ``results`` (estimator name → TaskDistanceResult)."""
    out = []
    for claim in claims:
        cells = [{"estimator": est, **claim_cell(r, a, claim)} for est, r in results.items() for a in r.archs]
        verdicts = {c["verdict"] for c in cells}
        overall = verdicts.pop() if len(verdicts) == 1 else "within noise"
        out.append(
            {
                "name": claim.name,
                "text": claim.text,
                "pairs": [list(p) for p in claim.pairs],
                "held": sum(c["held"] for c in cells),
                "of": sum(c["of"] for c in cells),
                "cells": cells,
                "verdict": overall,
            }
        )
    return {
        "claims": out,
        "verdicts": VERDICTS,
        "rule": "per cell: holds if the interval of the mean margin lies above 0, fails if below, else within "
        "noise; overall: holds/fails if every cell says so, else within noise",
    }


def claims_table(claims: dict, digits: int = 3) -> str:
    """The claims as a markdown table: one row per claim and (estimator, architecture) cell, then its verdict."""
    lines = [
        "| claim | estimator | arch | holds in seeds | margin (mean, 95% interval) | P(claimed closest) | "
        "P(claim) | closest found | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in claims["claims"]:
        for cell in c["cells"]:
            lo, hi = cell["interval"]
            p = ", ".join(f"{k} {100 * v:.0f}%" for k, v in cell["p_closest"].items())
            found = ", ".join(f"{t} ← {s}" for t, s in cell["closest"].items())
            lines.append(
                f"| {c['text']} | {cell['estimator']} | {cell['arch']} | {cell['held']}/{cell['of']} | "
                f"{cell['margin_mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] | {p} | "
                f"{100 * cell['p_joint']:.0f}% of {cell['draws']} | {found} | {cell['verdict']} |"
            )
        lines.append(f"| **{c['text']}** | all | all | **{c['held']}/{c['of']}** | | | | | **{c['verdict']}** |")
    return "\n".join(lines)


def claims_section(claims: dict, title: str = "## The papers' claims") -> str:
    """A report section: each claim stated in words beside its numbers, then the table."""
    parts = [
        title,
        "",
        "Orientation: d[a, b], source a = row, target b = column; TA-NAS picks a* = argmin_a d[a, b]. "
        "Margin = the runner-up's distance minus the claimed source's (> 0: the claim holds in that matrix).",
        "",
    ]
    for c in claims["claims"]:
        parts.append(
            f"- **{c['text']}** — {c['verdict']}: it holds in {c['held']} of {c['of']} seed matrices "
            f"over {len(c['cells'])} (estimator, architecture) cell(s)."
        )
    parts += ["", claims_table(claims), "", claims["rule"] + ".", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Running a named experiment


@dataclass(frozen=True)
class ReproduceConfig:
    """Sizes of one reproduction. ``SIZES`` holds the presets."""

    archs: tuple = ("mlp", "cnn")
    seeds: tuple = (0, 1, 2, 3, 4)
    estimators: tuple = ESTIMATORS
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    bootstrap: int = 20
    fisher_samples: int | None = None
    protocol: str = "papers"
    max_train_per_label: int | None = None
    image_size: int | None = None
    extra: dict = field(default_factory=dict)


SIZES = {
    # tests and CI: one architecture, two seeds, one epoch.
    "smallest": ReproduceConfig(archs=("mlp",), seeds=(0, 1), epochs=1, bootstrap=5, fisher_samples=200),
    # what fits a 2-core CPU in about 20 minutes on the MNIST subset.
    "default": ReproduceConfig(),
    # closer to the papers, for a GPU: their three architectures, 10 seeds; epochs still below their 100.
    "paper": ReproduceConfig(
        archs=("vgg16", "resnet18", "densenet121"), seeds=tuple(range(10)), epochs=30, bootstrap=100
    ),
}


def reproduce(
    name: str,
    out,
    config: ReproduceConfig = SIZES["default"],
    *,
    data_dir=None,
    device=None,
    progress: bool = True,
    claims=PAPER_CLAIMS,
    cache_dir=None,
) -> dict:
    """Run experiment ``name`` (one of :data:`EXPERIMENTS`) into ``out``: for every estimator of ``config``, the
    task-distance matrices of T0–T3 (:func:`fisherx.task_distances`, Adam, batch ``config.batch_size``, the
    papers' protocol by default), then the claims. Writes ``result_<estimator>.json``, ``claims.json``,
    ``claims.md`` and ``tables.txt``; the cache (``cache_dir``, default ``out/cache``) makes a rerun resume (the
    networks are shared by the estimators; runs of other estimators may share it). Returns the claims dict (with
    ``config`` and ``timings_s``)."""
    from ..tasks import preset
    from .distances import task_distances

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    bad = [e for e in config.estimators if e not in ESTIMATORS]
    if bad:
        raise ValueError(f"unknown estimator(s) {', '.join(bad)}; choose from {', '.join(ESTIMATORS)}")
    if name in ("cifar10", "cifar100", "imagenet") and data_dir is None:
        raise ValueError(f"experiment {name!r} needs data_dir: the folder with the data set's files")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = preset(
        name, protocol=config.protocol, max_train_per_label=config.max_train_per_label, image_size=config.image_size
    )
    results, timings = {}, {}
    for est in config.estimators:
        t0 = time.perf_counter()
        r = task_distances(
            tasks,
            archs=config.archs,
            seeds=config.seeds,
            epochs=config.epochs,
            cache_dir=cache_dir or out / "cache",
            data_dir=data_dir,
            batch_size=config.batch_size,
            lr=config.lr,
            fisher_kind=est,
            fisher_samples=config.fisher_samples,
            device=device,
            progress=progress,
            bootstrap=config.bootstrap,
        )
        timings[est] = time.perf_counter() - t0
        r.to_json(out / f"result_{est}.json")
        results[est] = r
    claims = evaluate_claims(results, claims)
    claims["experiment"] = name
    claims["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items() if k != "extra"}
    claims["estimators"] = {e: ESTIMATOR_TEXT[e] for e in config.estimators}
    claims["timings_s"] = timings
    atomic_write_text(out / "claims.json", json.dumps(claims, indent=1) + "\n")
    atomic_write_text(out / "claims.md", claims_section(claims, f"## {name}: the papers' claims") + "\n")
    atomic_write_text(out / "tables.txt", "\n\n".join(f"[{e}]\n{r.table()}" for e, r in results.items()) + "\n")
    return claims


def check_claims(claims: dict, results: dict) -> None:
    """Recompute every claim's per-seed margins, held counts and verdicts from the matrices in ``results`` and
    raise AssertionError on any disagreement with ``claims`` (what a reader can verify from result_*.json)."""
    by_name = {c.name: c for c in PAPER_CLAIMS}
    for c in claims["claims"]:
        claim = by_name[c["name"]]
        for cell in c["cells"]:
            r = results[cell["estimator"]]
            d = r.distances[cell["arch"]]
            names = list(r.task_names)
            for s in range(d.shape[0]):
                m = d[s].copy()
                np.fill_diagonal(m, np.inf)
                ok = all(names[int(np.argmin(m[:, names.index(t)]))] == a for t, a in claim.pairs)
                if ok != (cell["margins"][s] > 0):
                    raise AssertionError(
                        f"{c['name']} {cell['estimator']} {cell['arch']} seed {s}: argmin says "
                        f"{ok}, the margin {cell['margins'][s]}"
                    )
            if cell["held"] != sum(m > 0 for m in cell["margins"]):
                raise AssertionError(f"{c['name']}: held count {cell['held']} disagrees with the margins")
            if cell["verdict"] != _verdict(*cell["interval"]):
                raise AssertionError(f"{c['name']}: verdict {cell['verdict']} disagrees with {cell['interval']}")


def config_for(size: str = "default", **changes) -> ReproduceConfig:
    """The preset ``size`` with ``changes`` applied (``None`` values are ignored)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    return replace(SIZES[size], **{k: v for k, v in changes.items() if v is not None})


# ---------------------------------------------------------------------------------------------------------------
# Paired tests (no scipy): the t test, the sign test and Wilcoxon's signed-rank test, exact for small n


def paired_t(diffs) -> dict:
    """Paired t test of mean(diffs) = 0: t = mean / (s/√n), two-sided p = 1 − A(|t| | n−1), A the CDF of |T|."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n < 2:
        raise ValueError(f"a paired t test needs at least 2 pairs, got {n}")
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return {"t": float("inf") if d.mean() != 0 else 0.0, "df": n - 1, "p": 0.0 if d.mean() != 0 else 1.0}
    t = float(d.mean() / (sd / np.sqrt(n)))
    return {"t": t, "df": n - 1, "p": float(max(0.0, 1.0 - _trust._t_abs_cdf(abs(t), n - 1)))}


def sign_test(diffs) -> dict:
    """Exact two-sided sign test: zeros dropped, p = min(1, 2·P(Bin(n, ½) ≤ min(n₊, n₋)))."""
    from math import comb

    d = np.asarray(diffs, dtype=np.float64)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    n = pos + neg
    if n == 0:
        return {"positive": 0, "negative": 0, "p": 1.0}
    k = min(pos, neg)
    return {"positive": pos, "negative": neg, "p": min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)}


def wilcoxon_signed_rank(diffs) -> dict:
    """Exact two-sided Wilcoxon signed-rank test: zeros dropped, ties given mid-ranks, W₊ = Σ ranks of the positive
    differences; its null distribution (every sign equally likely) counted exactly over the 2ⁿ sign patterns by
    dynamic programming on doubled ranks; p = min(1, 2·min(P(W ≤ W₊), P(W ≥ W₊)))."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return {"w_plus": 0.0, "n": 0, "p": 1.0}
    a = np.abs(d)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(n)
    i = 0
    while i < n:  # mid-ranks of tied |d|
        j = i
        while j + 1 < n and a[order[j + 1]] == a[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r2 = np.rint(2 * ranks).astype(int)  # doubled ranks are integers
    counts = np.zeros(int(r2.sum()) + 1)
    counts[0] = 1.0
    for r in r2:  # each rank either joins W₊ or not
        counts[r:] = counts[r:] + counts[:-r].copy() if r else counts
    w2 = int(r2[d > 0].sum())
    total = counts.sum()
    lower, upper = counts[: w2 + 1].sum() / total, counts[w2:].sum() / total
    return {"w_plus": w2 / 2, "n": n, "p": float(min(1.0, 2 * min(lower, upper)))}


def paired_comparison(a, b, level: float = _trust.LEVEL, alpha: float = 0.05) -> dict:
    """a − b pair by pair: mean ± Student t interval, the three paired tests, and "significant" or "not
    significant" (the paired t test's two-sided p against ``alpha``; the rank tests are reported beside it)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    lo, hi = _trust.seed_interval(d, level)
    t = paired_t(d)
    return {
        "diffs": d.tolist(),
        "mean": float(d.mean()),
        "interval": [float(lo), float(hi)],
        "level": level,
        "t_test": t,
        "sign_test": sign_test(d),
        "wilcoxon": wilcoxon_signed_rank(d),
        "alpha": alpha,
        "verdict": "significant" if t["p"] < alpha else "not significant",
    }


# ---------------------------------------------------------------------------------------------------------------
# TA-NAS against random search over ε-seeds × search seeds


@dataclass(frozen=True)
class NasCompareConfig:
    """Sizes of :func:`nas_comparison`. The defaults are tiny (seconds per search on digits): ``search`` is the
    smallest demo's budget."""

    data: str = "digits"
    target: str = "T2"
    eps_seeds: tuple = (0, 1, 2)
    search_seeds: tuple = (0, 1, 2)
    arch: str = "cnn"
    search: SearchBudget = _demo.SIZES["smallest"].search
    fisher_samples: int | None = 150
    max_train_per_label: int | None = None  # cap the tasks' training data (tests: 30)


NAS_SIZES = {
    # tests: 30 training samples per label, one FUSE round of two candidates, one final epoch.
    "smallest": NasCompareConfig(max_train_per_label=30),
    # the run measured in docs/reproduce.md (digits, 100 training samples per label; ~8 min per 9 pairs, 1 thread).
    "default": NasCompareConfig(
        search=SearchBudget(eps_epochs=10, depth=2, rounds=3, alternations=3, final_epochs=10),
        max_train_per_label=100,
    ),
    # closer to the papers (a GPU): the demo's paper-size search, with every test sample in each Fisher.
    "paper": NasCompareConfig(fisher_samples=None, search=_demo.SIZES["paper"].search),
}


def _dictionary_for(path, base, family: dict, eps_seed: int, datas: dict, device):
    """A dictionary with ``base``'s baselines (spaces, genotypes) and ε-networks trained from ``eps_seed``."""
    fam = family["eps"]
    d = TaskDictionary.open_or_create(
        path,
        arch=family["arch"],
        head_width=family["head_width"],
        in_channels=family["in_channels"],
        image_size=family["image_size"],
        eps_epochs=fam["epochs"],
        eps_seed=eps_seed,
        eps_batch_size=fam["batch_size"],
        eps_lr=fam["lr"],
    )
    for name in base.names():
        if name not in d:
            e = base[name]
            net, eps = train_eps_network(d, datas[name], device=device)
            d.add(name, task=e.task, eps_network=net, eps=eps, space=e.space, genotype=e.genotype, search=e.search)
    return d


def nas_comparison(out, config: NasCompareConfig = NasCompareConfig(), *, device=None, progress: bool = False) -> dict:
    """TA-NAS against random search with equal budgets, over ``eps_seeds`` × ``search_seeds``.

    The baselines' spaces come from one FUSE search each (search seed 0, ε-seed ``eps_seeds[0]``). For every
    ε-seed e the baselines' and the target's ε-networks are retrained from e, so the distances d[a, target] and the
    closest baseline are re-sampled; for every search seed s, :func:`fisherx.nas.ta_nas` runs FUSE in the closest
    baseline's space and random search in the same space with the candidate-epochs FUSE spent. The pairs
    (TA-NAS, random) of test accuracies are compared by :func:`paired_comparison`. Writes ``nas_comparison.json``
    under ``out``; every search checkpoints there, so a rerun resumes."""
    from ..tasks import preset

    out = Path(out)
    tasks = {t.name: t for t in preset(config.data, max_train_per_label=config.max_train_per_label)}
    if config.target not in tasks:
        raise ValueError(f"target {config.target!r} is not a task of {config.data} ({', '.join(tasks)})")
    if len(config.eps_seeds) * len(config.search_seeds) < 2:
        raise ValueError("a paired comparison needs at least 2 (ε-seed, search seed) pairs")
    datas = {n: t.load() for n, t in tasks.items()}
    first = datas[config.target]
    width = max(d.num_classes for d in datas.values())
    search = config.search.fuse_options()
    base = TaskDictionary.open_or_create(
        out / f"dictionary_e{config.eps_seeds[0]}",
        arch=config.arch,
        head_width=width,
        in_channels=first.in_channels,
        image_size=first.image_size,
        eps_epochs=config.search.eps_epochs,
        eps_seed=config.eps_seeds[0],
    )
    general = config.search.general_space()
    for i, n in enumerate(t for t in tasks if t != config.target):
        if n not in base:
            # One search seed per baseline: with a shared seed every baseline's FUSE draws the same candidates, and
            # on easy tasks they pick the same winner, so every baseline's space is the same and the choice of
            # baseline cannot matter.
            add_baseline(
                base,
                datas[n],
                space=general,
                device=device,
                out_dir=out / "baselines",
                progress=progress,
                seed=i,
                **search,
            )
    runs = []
    t0 = time.perf_counter()
    for e in config.eps_seeds:
        d = (
            base
            if e == config.eps_seeds[0]
            else _dictionary_for(out / f"dictionary_e{e}", base, base.family, e, datas, device)
        )
        for s in config.search_seeds:
            rep = ta_nas(
                datas[config.target],
                d,
                compare=("random",),
                fisher_samples=config.fisher_samples,
                device=device,
                out_dir=out / "nas" / f"e{e}_s{s}",
                progress=progress,
                seed=s,
                **search,
            )
            rnd = rep.comparisons["random"]
            runs.append(
                {
                    "eps_seed": e,
                    "search_seed": s,
                    "distances": rep.distances,
                    "closest": rep.closest,
                    "space": str(rep.space),
                    "space_hash": rep.space.fingerprint(),
                    "ta_nas": rep.result.test_accuracy,
                    "random": rnd.test_accuracy,
                    "budget": rep.result.cost["candidate_epochs"],
                    "random_budget": rnd.cost["candidate_epochs"],
                }
            )
    distinct = _independent_pairs(runs)
    res = {
        # flat, as before the search budget was its own object: its fields beside the others
        "config": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in {**config.__dict__, **asdict(config.search)}.items()
            if k != "search"
        },
        "runs": runs,
        "seconds": time.perf_counter() - t0,
        "closest_by_eps_seed": {str(r["eps_seed"]): r["closest"] for r in runs},
        "comparison": paired_comparison(*distinct),
        "independent_pairs": len(distinct[0]),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "nas_comparison.json", json.dumps(res, indent=1) + "\n")
    return res


def _independent_pairs(runs: list) -> tuple[list, list]:
    """(TA-NAS, random) accuracies of the runs that are distinct searches. Both searches are deterministic given
    the space and the search seed, so ε-seeds that pick baselines with the same space repeat one pair exactly;
    counting the repeats as new pairs would shrink the interval with no new information."""
    seen, ta, rnd = set(), [], []
    for r in runs:
        key = (r.get("space_hash", r["space"]), r["search_seed"])
        if key not in seen:
            seen.add(key)
            ta.append(r["ta_nas"])
            rnd.append(r["random"])
    return ta, rnd


def nas_comparison_text(res: dict) -> str:
    """The comparison in a few lines of markdown: every pair, then mean ± interval, the tests and the verdict."""
    c, cfg = res["comparison"], res["config"]
    lines = [
        f"TA-NAS vs random search for {cfg['target']} on {cfg['data']}: {len(res['runs'])} pairs "
        f"(ε-seeds {cfg['eps_seeds']} × search seeds {cfg['search_seeds']}), equal candidate-epoch budgets.",
        "",
        "| ε-seed | search seed | closest baseline | TA-NAS test acc | random test acc | difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        lines.append(
            f"| {r['eps_seed']} | {r['search_seed']} | {r['closest']} | {r['ta_nas']:.3f} | "
            f"{r['random']:.3f} | {r['ta_nas'] - r['random']:+.3f} |"
        )
    lo, hi = c["interval"]
    n = res.get("independent_pairs", len(res["runs"]))
    lines += [
        "",
        f"{n} of the {len(res['runs'])} pairs are distinct searches (a search is fixed by its space and search "
        "seed; repeats are counted once).",
        f"Mean difference (TA-NAS − random): {c['mean']:+.4f}, {100 * c['level']:g}% interval "
        f"[{lo:+.4f}, {hi:+.4f}]; paired t = {c['t_test']['t']:.2f} (df {c['t_test']['df']}, p = "
        f"{c['t_test']['p']:.3f}); Wilcoxon signed-rank p = {c['wilcoxon']['p']:.3f}; sign test "
        f"{c['sign_test']['positive']}+/{c['sign_test']['negative']}− p = {c['sign_test']['p']:.3f}: "
        f"**{c['verdict']}** at α = {c['alpha']}.",
    ]
    return "\n".join(lines)
