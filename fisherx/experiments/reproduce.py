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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..io import atomic_write_text
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
    return {"arch": arch, "seeds": list(result.seeds), "margins": per_seed.tolist(),
            "held": int((per_seed > 0).sum()), "of": int(per_seed.size), "margin_mean": float(per_seed.mean()),
            "interval": [float(lo), float(hi)], "interval_kind": how, "level": level,
            "p_closest": p, "p_joint": float((draw_margins > 0).mean()), "draws": int(draws.shape[0]),
            "closest": {tgt: result.closest(arch)[tgt] for tgt, _ in claim.pairs},
            "verdict": _verdict(float(lo), float(hi))}


def evaluate_claims(results: dict, claims=PAPER_CLAIMS) -> dict:
    """Every claim over every (estimator, architecture) of ``results`` (estimator name → TaskDistanceResult)."""
    out = []
    for claim in claims:
        cells = [{"estimator": est, **claim_cell(r, a, claim)} for est, r in results.items() for a in r.archs]
        verdicts = {c["verdict"] for c in cells}
        overall = verdicts.pop() if len(verdicts) == 1 else "within noise"
        out.append({"name": claim.name, "text": claim.text, "pairs": [list(p) for p in claim.pairs],
                    "held": sum(c["held"] for c in cells), "of": sum(c["of"] for c in cells),
                    "cells": cells, "verdict": overall})
    return {"claims": out, "verdicts": VERDICTS,
            "rule": "per cell: holds if the interval of the mean margin lies above 0, fails if below, else within "
                    "noise; overall: holds/fails if every cell says so, else within noise"}


def claims_table(claims: dict, digits: int = 3) -> str:
    """The claims as a markdown table: one row per claim and (estimator, architecture) cell, then its verdict."""
    lines = ["| claim | estimator | arch | holds in seeds | margin (mean, 95% interval) | P(claimed closest) | "
             "P(claim) | closest found | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for c in claims["claims"]:
        for cell in c["cells"]:
            lo, hi = cell["interval"]
            p = ", ".join(f"{k} {100 * v:.0f}%" for k, v in cell["p_closest"].items())
            found = ", ".join(f"{t} ← {s}" for t, s in cell["closest"].items())
            lines.append(f"| {c['text']} | {cell['estimator']} | {cell['arch']} | {cell['held']}/{cell['of']} | "
                         f"{cell['margin_mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] | {p} | "
                         f"{100 * cell['p_joint']:.0f}% of {cell['draws']} | {found} | {cell['verdict']} |")
        lines.append(f"| **{c['text']}** | all | all | **{c['held']}/{c['of']}** | | | | | **{c['verdict']}** |")
    return "\n".join(lines)


def claims_section(claims: dict, title: str = "## The papers' claims") -> str:
    """A report section: each claim stated in words beside its numbers, then the table."""
    parts = [title, "", "Orientation: d[a, b], source a = row, target b = column; TA-NAS picks a* = argmin_a d[a, b]. "
             "Margin = the runner-up's distance minus the claimed source's (> 0: the claim holds in that matrix).",
             ""]
    for c in claims["claims"]:
        parts.append(f"- **{c['text']}** — {c['verdict']}: it holds in {c['held']} of {c['of']} seed matrices "
                     f"over {len(c['cells'])} (estimator, architecture) cell(s).")
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
    "paper": ReproduceConfig(archs=("vgg16", "resnet18", "densenet121"), seeds=tuple(range(10)), epochs=30,
                             bootstrap=100),
}


def reproduce(name: str, out, config: ReproduceConfig = SIZES["default"], *, data_dir=None, device=None,
              progress: bool = True, claims=PAPER_CLAIMS) -> dict:
    """Run experiment ``name`` (one of :data:`EXPERIMENTS`) into ``out``: for every estimator of ``config``, the
    task-distance matrices of T0–T3 (:func:`fisherx.task_distances`, Adam, batch ``config.batch_size``, the
    papers' protocol by default), then the claims. Writes ``result_<estimator>.json``, ``claims.json``,
    ``claims.md`` and ``tables.txt``; the cache under ``out/cache`` makes a rerun resume (the networks are shared
    by the estimators). Returns the claims dict (with ``config`` and ``timings_s``)."""
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
    tasks = preset(name, protocol=config.protocol, max_train_per_label=config.max_train_per_label,
                   image_size=config.image_size)
    results, timings = {}, {}
    for est in config.estimators:
        t0 = time.perf_counter()
        r = task_distances(tasks, archs=config.archs, seeds=config.seeds, epochs=config.epochs,
                           cache_dir=out / "cache", data_dir=data_dir, batch_size=config.batch_size, lr=config.lr,
                           fisher_kind=est, fisher_samples=config.fisher_samples, device=device, progress=progress,
                           bootstrap=config.bootstrap)
        timings[est] = time.perf_counter() - t0
        r.to_json(out / f"result_{est}.json")
        results[est] = r
    claims = evaluate_claims(results, claims)
    claims["experiment"] = name
    claims["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()
                        if k != "extra"}
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
                    raise AssertionError(f"{c['name']} {cell['estimator']} {cell['arch']} seed {s}: argmin says "
                                         f"{ok}, the margin {cell['margins'][s]}")
            if cell["held"] != sum(m > 0 for m in cell["margins"]):
                raise AssertionError(f"{c['name']}: held count {cell['held']} disagrees with the margins")
            if cell["verdict"] != _verdict(*cell["interval"]):
                raise AssertionError(f"{c['name']}: verdict {cell['verdict']} disagrees with {cell['interval']}")


def config_for(size: str = "default", **changes) -> ReproduceConfig:
    """The preset ``size`` with ``changes`` applied (``None`` values are ignored)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    return replace(SIZES[size], **{k: v for k, v in changes.items() if v is not None})
