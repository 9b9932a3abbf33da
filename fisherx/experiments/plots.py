"""Figures of a :class:`~fisherx.experiments.result.TaskDistanceResult`: heatmaps of the mean and std matrices, the
task atlas (classical MDS of the symmetrised matrix, arrows to each target's closest source) and the intervals with
P(closest). matplotlib is imported only when a figure is drawn, with the file-only Agg backend."""
from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes
from . import metrics as _metrics


def heatmaps(result, path, digits: int = 2) -> Path:
    """Heatmaps laid out like the papers' figures: one column per architecture, mean on top, std below."""
    plt = _pyplot()
    k, n = len(result.task_names), len(result.archs)
    fig, axes = plt.subplots(2, n, figsize=(1.1 * k * n + 1.5, 2.2 * k * 0.6 + 2.6), squeeze=False)
    for c, a in enumerate(result.archs):
        for r, (mat, what) in enumerate(((result.mean(a), "mean"), (result.std(a), "std"))):
            ax = axes[r, c]
            im = ax.imshow(mat, cmap="viridis" if r == 0 else "magma")
            for i in range(k):
                for j in range(k):
                    v = mat[i, j]
                    lum = im.norm(v) if np.isfinite(v) and im.norm.vmax != im.norm.vmin else 0.0
                    ax.text(j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=8,
                            color="black" if lum > 0.6 else "white")
            ax.set_xticks(range(k), result.task_names)
            ax.set_yticks(range(k), result.task_names)
            ax.set_xlabel("target")
            ax.set_ylabel("source")
            ax.set_title(f"{a} — {what}", fontsize=10)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{result.metric} over {len(result.seeds)} seed(s), head {result.head_mode}", fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path)


def embedding(result, arch: str | None = None) -> np.ndarray:
    """2-D coordinates of the tasks: classical MDS of the symmetrised mean matrix (D + Dᵀ)/2.

    The asymmetry is lost in the embedding; :func:`atlas` draws it back as arrows to each target's
    closest source. For a similarity (cosine), 1 − similarity is embedded.
    """
    m = _metrics.as_distance(result.metric, result.mean(arch))
    return classical_mds((m + m.T) / 2.0)


def atlas(result, path) -> Path:
    """A task atlas per architecture: tasks placed by :func:`embedding`, with an arrow from each target's
    closest source to it (the asymmetric information the embedding cannot show)."""
    plt = _pyplot()
    n = len(result.archs)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False)
    for c, a in enumerate(result.archs):
        ax, xy = axes[0, c], embedding(result, a)
        ax.scatter(xy[:, 0], xy[:, 1], s=60, zorder=3)
        for i, name in enumerate(result.task_names):
            # Alternate label sides so that two tasks embedded close together stay readable.
            ax.annotate(name, xy[i], textcoords="offset points", xytext=(7, 5) if i % 2 == 0 else (-7, -14),
                        ha="left" if i % 2 == 0 else "right", fontsize=10)
        idx = {t: i for i, t in enumerate(result.task_names)}
        for tgt, src in result.closest(a).items():
            ax.annotate("", xy=xy[idx[tgt]], xytext=xy[idx[src]],
                        arrowprops=dict(arrowstyle="->", color="tab:red", alpha=0.7, shrinkA=6, shrinkB=6))
        span = float(np.ptp(xy)) if xy.size else 1.0
        pad = 0.2 * (span if span > 0 else 1.0)
        ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
        ax.set_ylim(xy[:, 1].min() - pad, xy[:, 1].max() + pad)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{a}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"task atlas: classical MDS of (D + Dᵀ)/2 ({result.metric}); arrow = closest source → target",
                 fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path)


def intervals(result, path, digits: int = 2) -> Path:
    """Per architecture and target: every source's mean distance with its interval as an error bar (over seeds
    when there are several, else the bootstrap one) and, above it, its probability of being the closest."""
    plt = _pyplot()
    k, n = len(result.task_names), len(result.archs)
    fig, axes = plt.subplots(n, k, figsize=(2.6 * k + 0.5, 2.8 * n + 0.6), squeeze=False)
    for r, a in enumerate(result.archs):
        mean, prob = result.mean(a), result.closest_probability(a)
        iv = result.interval_seeds(a)
        iv = iv if iv is not None else (result.interval_bootstrap(a).mean(axis=0)
                                        if a in result.replicates else np.stack([mean, mean], axis=-1))
        for j, tgt in enumerate(result.task_names):
            ax, src = axes[r, j], [i for i in range(k) if i != j]
            m = mean[src, j]
            err = np.abs(np.stack([m - iv[src, j, 0], iv[src, j, 1] - m]))
            ax.bar(range(len(src)), m, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
            for x, i in enumerate(src):
                ax.annotate(f"{100 * prob[i, j]:.0f}%", (x, iv[i, j, 1]), textcoords="offset points",
                            xytext=(0, 3), ha="center", fontsize=8)
            ax.set_xticks(range(len(src)), [result.task_names[i] for i in src])
            ax.set_title(f"{a}: → {tgt}", fontsize=9)
            ax.margins(y=0.2)
            if j == 0:
                ax.set_ylabel(result.metric)
    fig.suptitle(f"mean {result.metric} per source, {100 * result.level:g}% interval; % = P(closest) over "
                 f"{len(result.draws())} draws", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path)


def classical_mds(d: np.ndarray, dims: int = 2) -> np.ndarray:
    """Classical (Torgerson) MDS: coordinates whose Euclidean distances best match the symmetric matrix ``d``.

    B = −½·J·D²·J with J = I − 11ᵀ/n; the coordinates are the top eigenvectors of B scaled by √eigenvalue
    (negative eigenvalues, from a non-Euclidean ``d``, are clipped to 0). Signs are fixed so that the result is
    deterministic.
    """
    d = np.asarray(d, dtype=np.float64)
    n = d.shape[0]
    j = np.eye(n) - 1.0 / n
    b = -0.5 * j @ (d ** 2) @ j
    w, v = np.linalg.eigh(b)
    order = np.argsort(w)[::-1][:dims]
    w, v = np.clip(w[order], 0.0, None), v[:, order]
    for c in range(v.shape[1]):
        i = int(np.argmax(np.abs(v[:, c])))
        if v[i, c] < 0:
            v[:, c] = -v[:, c]
    xy = v * np.sqrt(w)
    if xy.shape[1] < dims:
        xy = np.pad(xy, ((0, 0), (0, dims - xy.shape[1])))
    return xy


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window (also on machines without a display)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path) -> Path:
    buf = _io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=130)
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())

