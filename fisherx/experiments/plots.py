"""Figures of a :class:`~fisherx.experiments.result.TaskDistanceResult`.

- :func:`heatmaps` / :func:`heatmap`: the mean and std matrices on colour scales fixed by the metric (FTD and
  cosine on [0, 1]), so that panels of different architectures or runs can be compared; labelled colour bars.
- :func:`atlas`: the tasks placed by classical MDS of the symmetrised matrix, arrows to each target's closest
  source, and the embedding's fidelity (stress, explained variance, the worst-kept pair) in the title. When two
  dimensions cannot hold the matrix (:func:`embedding_fidelity`), the panel is a clustered heatmap with its
  dendrogram instead (:func:`clustered_heatmap`), so no figure shows tasks close that are not.
- :func:`intervals`: every source's mean with its interval (clipped to the metric's range) and P(closest).

Every function returns a :class:`matplotlib.figure.Figure`, writes it (atomically) to ``path`` when given, and
draws into an existing ``ax`` when given one (one panel: pick it with ``arch=``, ``stat=`` or ``target=``).
Figures are built without pyplot, so no backend is chosen or forced: this works in notebooks, scripts and on
machines without a display alike, and a figure that is not kept is simply garbage-collected.
"""

from __future__ import annotations

import io as _io
import math
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes
from . import metrics as _metrics

# An embedding is unfaithful when its Kruskal stress-1 is above this ("poor" in Kruskal's 1964 scale) ...
MAX_STRESS = 0.2
# ... or when some pair of tasks is drawn at less than this fraction of its actual (symmetrised) distance.
MIN_PAIR_RATIO = 0.5
_DENDROGRAM_PAD = 62  # points: a clustered heatmap's title sits above the dendrogram drawn over it


# -- heatmaps ----------------------------------------------------------------------------------------------------
def heatmap(result, arch: str | None = None, *, stat: str = "mean", ax=None, path=None, digits: int = 2):
    """One heatmap panel: ``stat`` ("mean" or "std" over seeds) of ``arch``'s matrix, rows = sources, columns =
    targets, each cell labelled with its value. The mean is drawn on the metric's range ([0, 1] for FTD and
    cosine; [0, the largest mean of the result] for the unbounded log-det distance) and the std on [0, the largest
    std of the result], so every panel of one result shares its scale. With a single seed there is no spread: the
    std panel says so instead of drawing a meaningless scale."""
    if stat not in ("mean", "std"):
        raise ValueError(f"stat must be 'mean' or 'std', got {stat!r}")
    fig, ax = _figure_and_axes(ax, (1.1 * len(result.task_names) + 1.6, 0.9 * len(result.task_names) + 1.2))
    a = result.resolve_arch(arch)
    names, k = result.task_names, len(result.task_names)
    ax.set_title(f"{a} — {stat}", fontsize=10)
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    if stat == "std" and len(result.seeds) < 2:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, "one seed:\nno spread over seeds", ha="center", va="center", transform=ax.transAxes)
        return save_figure(fig, path)
    mat = result.mean(a) if stat == "mean" else result.std(a)
    lo, hi = _scale(result, stat)
    im = ax.imshow(mat, cmap="viridis" if stat == "mean" else "magma", vmin=lo, vmax=hi)
    for i in range(k):
        for j in range(k):
            v = mat[i, j]
            lum = im.norm(v) if np.isfinite(v) else 0.0
            ax.text(
                j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=8, color="black" if lum > 0.6 else "white"
            )
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    what = _metrics.label(result.metric)
    bar.set_label(
        f"{what}, mean of {len(result.seeds)} seeds" if stat == "mean" else f"{what}, std over seeds", fontsize=8
    )
    return save_figure(fig, path)


def heatmaps(result, path=None, *, digits: int = 2):
    """Heatmaps laid out like the papers' figures: one column per architecture, mean on top, std below (see
    :func:`heatmap` for the scales)."""
    k, n = len(result.task_names), len(result.archs)
    fig = new_figure((n * (0.9 * k + 2.2), 2 * (0.8 * k + 1.0) + 0.6))
    axes = fig.subplots(2, n, squeeze=False)
    for c, a in enumerate(result.archs):
        for r, stat in enumerate(("mean", "std")):
            heatmap(result, a, stat=stat, ax=axes[r, c], digits=digits)
    fig.suptitle(
        f"{_metrics.label(result.metric)} over {len(result.seeds)} seed(s); rows = source, columns = "
        f"target; head {result.head_mode}",
        fontsize=10,
    )
    return save_figure(fig, path)


def _scale(result, stat: str) -> tuple[float, float]:
    """The colour range of ``stat`` shared by every panel of ``result``."""
    if stat == "std":
        top = max((float(np.nanmax(result.std(a))) for a in result.archs), default=0.0)
        return 0.0, top if top > 0 else 1.0
    lo, hi = _metrics.value_range(result.metric)
    if math.isinf(hi):
        hi = max((float(np.nanmax(result.mean(a))) for a in result.archs), default=1.0)
        hi = hi if hi > lo else lo + 1.0
    return float(lo), float(hi)


# -- the atlas ---------------------------------------------------------------------------------------------------
def embedding(result, arch: str | None = None) -> np.ndarray:
    """2-D coordinates of the tasks: classical MDS of the symmetrised mean matrix (D + Dᵀ)/2.

    The asymmetry is lost in the embedding; :func:`atlas` draws it back as arrows to each target's
    closest source. For a similarity (cosine), 1 − similarity is embedded. How well the two dimensions keep the
    distances: :func:`embedding_fidelity`.
    """
    return classical_mds(_symmetric(result, arch))


def embedding_fidelity(result, arch: str | None = None) -> dict:
    """How faithful :func:`embedding` is to the symmetrised matrix δ = (D + Dᵀ)/2 it embeds.

    - ``stress``: Kruskal's stress-1, √(Σ (δ_ij − e_ij)² / Σ δ_ij²) over pairs i < j, e the embedded distances
      (0 = exact; above 0.2 is poor);
    - ``explained``: the share of the positive eigenvalues of the MDS matrix kept by the two dimensions;
    - ``worst_pair``: ``(task, task, δ, e)`` for the pair drawn at the smallest fraction of its distance;
    - ``faithful``: stress ≤ :data:`MAX_STRESS` and that fraction ≥ :data:`MIN_PAIR_RATIO`.
    """
    d = _symmetric(result, arch)
    return _fidelity(result, d, *_mds(d, 2))


def _fidelity(result, d: np.ndarray, xy: np.ndarray, w: np.ndarray) -> dict:
    """:func:`embedding_fidelity` of the coordinates ``xy`` (eigenvalues ``w``) of the symmetric matrix ``d``."""
    e = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    iu = np.triu_indices(len(d), 1)
    delta, emb = d[iu], e[iu]
    denom = float((delta**2).sum())
    stress = math.sqrt(float(((delta - emb) ** 2).sum()) / denom) if denom > 0 else 0.0
    pos = np.clip(w, 0.0, None)
    explained = float(pos[:2].sum() / pos.sum()) if pos.sum() > 0 else 1.0
    worst = None
    if delta.size:
        ratio = np.where(delta > 0, emb / np.where(delta > 0, delta, 1.0), 1.0)
        p = int(np.argmin(ratio))
        names = result.task_names
        worst = (names[iu[0][p]], names[iu[1][p]], float(delta[p]), float(emb[p]))
        worst_ratio = float(ratio[p])
    else:
        worst_ratio = 1.0
    return {
        "stress": stress,
        "explained": explained,
        "worst_pair": worst,
        "faithful": stress <= MAX_STRESS and worst_ratio >= MIN_PAIR_RATIO,
    }


def atlas(result, path=None, *, arch: str | None = None, ax=None, fallback: bool = True):
    """A task atlas per architecture (or, given ``ax``, of ``arch`` only): tasks placed by :func:`embedding`,
    with an arrow from each target's closest source to it (the asymmetry the embedding cannot show), and the
    embedding's fidelity in the panel title. Where the embedding is unfaithful (:func:`embedding_fidelity`) and
    ``fallback`` is true, the panel is a :func:`clustered_heatmap` instead."""
    if ax is not None:
        _atlas_panel(result, result.resolve_arch(arch), ax, fallback)
        return save_figure(ax.figure, path)
    n = len(result.archs)
    fig = new_figure((4.6 * n, 5.0))
    axes = fig.subplots(1, n, squeeze=False)
    for c, a in enumerate(result.archs):
        _atlas_panel(result, a, axes[0, c], fallback)
    fig.suptitle(
        f"task atlas ({_metrics.label(result.metric)}): MDS of (D + Dᵀ)/2,\narrow = closest source → target", fontsize=9
    )
    return save_figure(fig, path)


def _atlas_panel(result, a: str, ax, fallback: bool) -> None:
    d = _symmetric(result, a)
    xy, w = _mds(d, 2)
    fit = _fidelity(result, d, xy, w)
    if fallback and not fit["faithful"]:
        clustered_heatmap(result, a, ax=ax)
        src, dst, real, drawn = fit["worst_pair"] or ("", "", 0.0, 0.0)
        ax.set_title(
            f"{a}: 2-D MDS unfaithful (stress {fit['stress']:.2f}; {src}–{dst} {real:.2f} drawn "
            f"{drawn:.2f}),\nso clustered (D + Dᵀ)/2",
            fontsize=8,
            pad=_DENDROGRAM_PAD,
        )
        return
    ax.scatter(xy[:, 0], xy[:, 1], s=60, zorder=3)
    for i, name in enumerate(result.task_names):
        # Alternate label sides so that two tasks embedded close together stay readable.
        ax.annotate(
            name,
            xy[i],
            textcoords="offset points",
            xytext=(7, 5) if i % 2 == 0 else (-7, -14),
            ha="left" if i % 2 == 0 else "right",
            fontsize=10,
        )
    idx = {t: i for i, t in enumerate(result.task_names)}
    for tgt, src in result.closest(a).items():
        ax.annotate(
            "",
            xy=xy[idx[tgt]],
            xytext=xy[idx[src]],
            arrowprops={"arrowstyle": "->", "color": "tab:red", "alpha": 0.7, "shrinkA": 6, "shrinkB": 6},
        )
    span = float(np.ptp(xy)) if xy.size else 1.0
    pad = 0.2 * (span if span > 0 else 1.0)
    ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
    ax.set_ylim(xy[:, 1].min() - pad, xy[:, 1].max() + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(
        f"{a}: stress {fit['stress']:.2f}, 2-D keeps {100 * fit['explained']:.0f}% of the variance", fontsize=8
    )
    ax.set_xticks([])
    ax.set_yticks([])


def clustered_heatmap(result, arch: str | None = None, *, ax=None, path=None):
    """The symmetrised matrix (D + Dᵀ)/2 of ``arch`` with rows and columns in the leaf order of its average-
    linkage (UPGMA) dendrogram, drawn above the heatmap: what the atlas shows when two dimensions cannot."""
    fig, ax = _figure_and_axes(ax, (1.0 * len(result.task_names) + 2.0, 1.0 * len(result.task_names) + 2.2))
    a = result.resolve_arch(arch)
    d = _symmetric(result, a)
    order, merges = average_linkage(d)
    names = [result.task_names[i] for i in order]
    lo, hi = _scale(result, "mean")
    if _metrics.is_similarity(result.metric):  # drawn as self value − similarity
        lo, hi = _metrics.self_value(result.metric) - hi, _metrics.self_value(result.metric) - lo
    im = ax.imshow(d[np.ix_(order, order)], cmap="viridis", vmin=lo, vmax=hi)
    ax.set_xticks(range(len(order)), names)
    ax.set_yticks(range(len(order)), names)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    what = _metrics.label(result.metric)
    if _metrics.is_similarity(result.metric):
        what = f"{_metrics.self_value(result.metric):g} − {what}"
    bar.set_label(f"{what}, symmetrised", fontsize=8)
    _draw_dendrogram(ax.inset_axes((0.0, 1.02, 1.0, 0.25)), len(order), order, merges)
    ax.set_title(f"{a}: clustered (D + Dᵀ)/2", fontsize=9, pad=_DENDROGRAM_PAD)
    return save_figure(fig, path)


def average_linkage(d: np.ndarray) -> tuple[list, list]:
    """Average-linkage (UPGMA) clustering of the symmetric distance matrix ``d``.

    Returns ``(order, merges)``: the leaves in dendrogram order, and every merge as ``(left, right, height)``
    where a cluster is the tuple of its leaves. Ties merge the pair that comes first, so the result is
    deterministic."""
    d = np.asarray(d, dtype=np.float64)
    clusters = [(i,) for i in range(len(d))]
    merges = []
    while len(clusters) > 1:
        best = None
        for p in range(len(clusters)):
            for q in range(p + 1, len(clusters)):
                h = float(d[np.ix_(clusters[p], clusters[q])].mean())
                if best is None or h < best[0]:
                    best = (h, p, q)
        h, p, q = best
        left, right = clusters[p], clusters[q]
        merges.append((left, right, h))
        clusters = [c for i, c in enumerate(clusters) if i not in (p, q)] + [left + right]
    return (list(clusters[0]) if clusters else []), merges


def _draw_dendrogram(ax, n: int, order: list, merges: list) -> None:
    pos = {(leaf,): float(x) for x, leaf in enumerate(order)}
    height = {(leaf,): 0.0 for leaf in order}
    for left, right, h in merges:
        xl, xr = pos[left], pos[right]
        ax.plot([xl, xl, xr, xr], [height[left], h, h, height[right]], color="0.3", lw=1)
        pos[left + right], height[left + right] = (xl + xr) / 2, h
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, max((h for *_, h in merges), default=1.0) * 1.05 or 1.0)
    ax.axis("off")


# -- intervals ---------------------------------------------------------------------------------------------------
def intervals(result, path=None, *, arch: str | None = None, target: str | None = None, ax=None, digits: int = 2):
    """Per architecture and target: every source's mean with its interval as an error bar (over seeds when there
    are several, else the bootstrap one; clipped to the metric's range) and, above it, its probability of being
    the closest. Given ``ax``, one panel: ``arch`` (default the first) and ``target`` (default the first task)."""
    if ax is not None:
        a = result.resolve_arch(arch)
        j = result.task_names.index(target) if target is not None else 0
        _interval_panel(result, a, j, ax)
        ax.set_ylabel(_metrics.label(result.metric))
        return save_figure(ax.figure, path)
    k, n = len(result.task_names), len(result.archs)
    fig = new_figure((2.6 * k + 0.5, 2.8 * n + 0.8))
    axes = fig.subplots(n, k, squeeze=False)
    for r, a in enumerate(result.archs):
        for j in range(k):
            _interval_panel(result, a, j, axes[r, j])
            if j == 0:
                axes[r, j].set_ylabel(_metrics.label(result.metric))
    fig.suptitle(
        f"mean {_metrics.label(result.metric)} per source, {100 * result.level:g}% interval; % = "
        f"P(closest) over {len(result.draws())} draws",
        fontsize=9,
    )
    return save_figure(fig, path)


def _interval_panel(result, a: str, j: int, ax) -> None:
    k = len(result.task_names)
    mean, prob = result.mean(a), result.closest_probability(a)
    iv = result.interval_seeds(a)
    if iv is None:
        boot = result.interval_bootstrap(a)
        iv = boot.mean(axis=0) if boot is not None else np.stack([mean, mean], axis=-1)
    src = [i for i in range(k) if i != j]
    m = mean[src, j]
    err = np.clip(np.stack([m - iv[src, j, 0], iv[src, j, 1] - m]), 0.0, None)
    ax.bar(range(len(src)), m, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
    for x, i in enumerate(src):
        ax.annotate(
            f"{100 * prob[i, j]:.0f}%",
            (x, iv[i, j, 1]),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(range(len(src)), [result.task_names[i] for i in src])
    ax.set_title(f"{a}: → {result.task_names[j]}", fontsize=9)
    lo, hi = _metrics.value_range(result.metric)
    if math.isfinite(hi):
        ax.set_ylim(lo, hi + 0.15 * (hi - lo))  # room for the P(closest) labels above a bar at the top
    else:
        ax.margins(y=0.2)


# -- shared ------------------------------------------------------------------------------------------------------
def classical_mds(d: np.ndarray, dims: int = 2) -> np.ndarray:
    """Classical (Torgerson) MDS: coordinates whose Euclidean distances best match the symmetric matrix ``d``.

    B = −½·J·D²·J with J = I − 11ᵀ/n; the coordinates are the top eigenvectors of B scaled by √eigenvalue
    (negative eigenvalues, from a non-Euclidean ``d``, are clipped to 0). Signs are fixed so that the result is
    deterministic.
    """
    return _mds(d, dims)[0]


def _mds(d: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates, all eigenvalues of B in decreasing order)."""
    d = np.asarray(d, dtype=np.float64)
    n = d.shape[0]
    j = np.eye(n) - 1.0 / n
    b = -0.5 * j @ (d**2) @ j
    w_all, v_all = np.linalg.eigh(b)
    order = np.argsort(w_all)[::-1]
    w_sorted = w_all[order]
    w, v = np.clip(w_sorted[:dims], 0.0, None), v_all[:, order[:dims]]
    for c in range(v.shape[1]):
        i = int(np.argmax(np.abs(v[:, c])))
        if v[i, c] < 0:
            v[:, c] = -v[:, c]
    xy = v * np.sqrt(w)
    if xy.shape[1] < dims:
        xy = np.pad(xy, ((0, 0), (0, dims - xy.shape[1])))
    return xy, w_sorted


def _symmetric(result, arch: str | None) -> np.ndarray:
    m = _metrics.as_distance(result.metric, result.mean(arch))
    return (m + m.T) / 2.0


def new_figure(size):
    """A matplotlib Figure of ``size`` inches, built without pyplot (no backend chosen, nothing kept alive by a
    global figure list), with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def _figure_and_axes(ax, size):
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(size)
    return fig, fig.subplots()


def save_figure(fig, path):
    """Write ``fig`` to ``path`` (atomically; the format from its suffix) when given; return ``fig``."""
    if path is not None:
        buf = _io.BytesIO()
        fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=130)
        atomic_write_bytes(path, buf.getvalue())
    return fig
