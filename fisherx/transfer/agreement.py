"""Does the FTD rank sources as the brute-force affinity does? Rank correlations per target, top-1 agreement, and
what each method cost.

For a target b the sources are the other tasks a ≠ b. FTD says a is a good source when d[a, b] is small, the
affinity when it is large, so the statistics compare −d[:, b] with affinity[:, b]:

- Spearman's ρ: the Pearson correlation of the two rank vectors (ties get their average rank);
- Kendall's τ_b = (C − D) / √((C + D + T_x)(C + D + T_y)) over the source pairs (C concordant, D discordant,
  T_x / T_y tied in one vector only);
- top-1: whether the FTD-closest source is the affinity-best one.

Each is computed per seed; the interval is Student's t over seeds (:func:`fisherx.experiments.trust.seed_interval`),
cut to [−1, 1].
A vector without spread (all values equal) has no ranks to compare: its correlation is NaN.
"""

from __future__ import annotations

import math

import numpy as np

from ..experiments.trust import LEVEL, seed_interval


def rankdata(x) -> np.ndarray:
    """Ranks 1..n of ``x``, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    sx = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman's ρ of two equally long vectors (NaN when either has no spread)."""
    rx, ry = rankdata(x), rankdata(y)
    if rx.size != ry.size:
        raise ValueError(f"spearman: vectors of different lengths {rx.size} and {ry.size}")
    dx, dy = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum() / den) if den > 0 else float("nan")


def kendall(x, y) -> float:
    """Kendall's τ_b of two equally long vectors (NaN when either has no spread)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size != y.size:
        raise ValueError(f"kendall: vectors of different lengths {x.size} and {y.size}")
    i, j = np.triu_indices(x.size, 1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    both = float((sx * sy).sum())
    nx, ny = float((sx != 0).sum()), float((sy != 0).sum())
    return both / math.sqrt(nx * ny) if nx > 0 and ny > 0 else float("nan")


def seed_mean_interval(values: list, level: float, bounds: tuple[float, float] | None = None):
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or not np.isfinite(v).all():
        return None
    iv = seed_interval(v, level)
    if bounds is not None:  # a correlation's interval is cut to [-1, 1], where the statistic lives
        iv = np.clip(iv, *bounds)
    return [float(b) for b in iv]


def agreement(result, kind: str = "ahp", level: float = LEVEL) -> dict:
    """Per target: Spearman and Kendall between −FTD and the ``kind`` affinity over the other sources, per seed,
    their mean and t interval over seeds; the FTD-closest and affinity-best source per seed and how often they
    coincide."""
    aff = result.affinity(kind)
    names = list(result.task_names)
    out = {}
    for b, target in enumerate(names):
        others = [a for a in range(len(names)) if a != b]
        rho, tau, closest, best = [], [], [], []
        for s in range(len(result.seeds)):
            d, f = result.ftd[s, others, b], aff[s, others, b]
            rho.append(spearman(-d, f))
            tau.append(kendall(-d, f))
            closest.append(names[others[int(np.argmin(d))]])
            best.append(names[others[int(np.argmax(f))]])
        out[target] = {
            "spearman": {
                "per_seed": rho,
                "mean": float(np.mean(rho)),
                "interval": seed_mean_interval(rho, level, (-1, 1)),
            },
            "kendall": {
                "per_seed": tau,
                "mean": float(np.mean(tau)),
                "interval": seed_mean_interval(tau, level, (-1, 1)),
            },
            "ftd_closest": closest,
            "affinity_best": best,
            "top1_agreement": float(np.mean([c == b_ for c, b_ in zip(closest, best, strict=True)])),
        }
    return out


def _fmt(stat: dict) -> str:
    iv = stat["interval"]
    return f"{stat['mean']:+.2f}" + (f" [{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv else "")


def agreement_table(agree: dict, level: float = LEVEL) -> str:
    """The agreement per target as text: ρ and τ (mean [interval]), the FTD-closest and affinity-best sources."""
    rows = [("target", "Spearman", "Kendall", "FTD-closest", "affinity-best", "top-1")]
    for t, a in agree.items():
        rows.append(
            (
                t,
                _fmt(a["spearman"]),
                _fmt(a["kendall"]),
                ",".join(a["ftd_closest"]),
                ",".join(a["affinity_best"]),
                f"{a['top1_agreement']:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines + [f"(mean over seeds [{level:.0%} t interval over seeds]; per-seed sources listed)"])


def cost_table(result) -> str:
    """Wall time of each stage and of each method, and the ratio brute force / FTD."""
    c = result.cost()
    k, s = len(result.task_names), len(result.seeds)
    rows = [
        ("train the K sources", c["sources_seconds"], f"{k * s} networks"),
        ("Fishers F_ab", c["fishers_seconds"], f"{k * k * s} Fishers"),
        ("fine-tunes a -> b", c["fine_tunes_seconds"], f"{k * k * s} fine-tunes"),
        ("from scratch on b", c["scratch_seconds"], f"{k * s} networks"),
        ("FTD total (sources + Fishers)", c["ftd_seconds"], ""),
        ("brute force total (sources + fine-tunes + scratch)", c["brute_force_seconds"], ""),
    ]
    w = max(len(r[0]) for r in rows)
    lines = [f"{n:<{w}}  {sec:9.2f} s  {what}".rstrip() for n, sec, what in rows]
    lines.append(
        f"brute force / FTD: {c['ratio']:.2f}x overall"
        + (
            f", {c['marginal_ratio']:.1f}x for the part that differs (fine-tunes + scratch vs Fishers)"
            if c["marginal_ratio"] is not None
            else ""
        )
    )
    return "\n".join(lines)


def plot_matrices(result, path=None, kind: str = "ahp"):
    """A figure: the mean FTD matrix (on FTD's range [0, 1]) beside the mean ``kind`` affinity matrix (rows =
    source, columns = target), with labelled colour bars; returned, and written to ``path`` when given."""
    from ..experiments.plots import new_figure, save_figure

    names = result.task_names
    fig = new_figure((4 + 1.4 * len(names), 0.7 * len(names) + 2))
    axes = fig.subplots(1, 2)
    panels = (
        (axes[0], result.ftd.mean(0), "FTD d[a, b] (lower = closer)", "viridis_r", (0.0, 1.0), "FTD, mean over seeds"),
        (
            axes[1],
            result.affinity(kind).mean(0),
            f"affinity ({kind}, higher = better)",
            "viridis",
            (None, None),
            f"{kind} affinity, mean over seeds",
        ),
    )
    for ax, m, title, cmap, (lo, hi), label in panels:
        im = ax.imshow(m, cmap=cmap, vmin=lo, vmax=hi)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("target b")
        ax.set_ylabel("source a")
        ax.set_title(title, fontsize=9)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(im, ax=ax, shrink=0.8).set_label(label, fontsize=7)
    return save_figure(fig, path)


def plot_cost(result, path=None):
    """A figure: wall seconds of FTD against brute force, stacked by stage; returned, and written to ``path`` when
    given."""
    from ..experiments.plots import new_figure, save_figure

    c = result.cost()
    fig = new_figure((5, 3.2))
    ax = fig.subplots()
    ax.bar(["FTD", "brute force"], [c["sources_seconds"]] * 2, label="train sources", color="#999999")
    ax.bar(["FTD"], [c["fishers_seconds"]], bottom=[c["sources_seconds"]], label="Fishers", color="#1f77b4")
    ax.bar(
        ["brute force"], [c["fine_tunes_seconds"]], bottom=[c["sources_seconds"]], label="fine-tunes", color="#d62728"
    )
    ax.bar(
        ["brute force"],
        [c["scratch_seconds"]],
        bottom=[c["sources_seconds"] + c["fine_tunes_seconds"]],
        label="from scratch",
        color="#ff9896",
    )
    ax.set_ylabel("wall seconds")
    ax.set_title(f"compute: brute force / FTD = {c['ratio']:.2f}x", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
