"""Task-distance matrices as in the papers: train an ε-approximation network per task, take every network's Fisher
on every task's test data, and turn the Fishers into a matrix d[a, b] per architecture and seed (DESIGN §1).

``d[a, b]`` is the distance from source task a to target task b: F_ab is the Fisher of N_a (trained on a) on b's
test data and F_bb that of N_b on the same data. Rows are sources, columns targets, as in the papers' figures.
"""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import _validate
from .. import distributed as _fxd
from .. import models as _models
from . import trust as _trust
from ..io.cache import Cache
from ..distance import METRICS, distance_column
from ..io import atomic_write_bytes, atomic_write_text
from ..tasks import Task, TaskData
from ..models.training import EpsilonWarning, default_device, seeded, train

HEAD_MODES = ("shared", "refit")
# Bump when what a trained-network or Fisher entry means changes (training recipe, Fisher definition...).
RECIPE_VERSION = 1


@dataclass
class TaskDistanceResult:
    """Distances between tasks for one or more architectures, over several seeds.

    ``distances[arch]`` is an (S, K, K) float64 array, ``[s, a, b]`` = d(task a → task b) with seed ``seeds[s]``;
    ``accuracies[arch]`` is (S, K): the test accuracy of every task's network. ``head_mode`` says how networks
    with fewer labels than the family were handled ("shared": one head width for all, DESIGN §1; "refit": N_a's
    head refitted on b with features frozen before F_ab). For ``metric="cosine"`` the values are similarities.

    Trust (:mod:`fisherx.experiments.trust`, docs/trust.md): ``replicates[arch]`` is (S, R, K, K), the paired bootstrap
    replicates d_r[a, b] of every seed's matrix over its test samples (``task_distances(bootstrap=R)``; empty
    without); ``concentration[arch]`` (S, K, K) the share of tr(F_ab) in its 10 largest entries; ``level`` the
    confidence level of :meth:`interval_seeds` and :meth:`interval_bootstrap`.
    """

    task_names: list
    archs: list
    seeds: list
    metric: str
    distances: dict
    accuracies: dict
    head_mode: str
    head_width: int
    config: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    replicates: dict = field(default_factory=dict)
    concentration: dict = field(default_factory=dict)
    level: float = _trust.LEVEL

    # -- statistics ------------------------------------------------------------------------------------------
    def mean(self, arch: Optional[str] = None) -> np.ndarray:
        """Mean over seeds of the (K, K) matrix of ``arch`` (the first architecture by default)."""
        return self.distances[self._arch(arch)].mean(axis=0)

    def std(self, arch: Optional[str] = None) -> np.ndarray:
        """Sample standard deviation over seeds (ddof = 1; zeros with a single seed)."""
        d = self.distances[self._arch(arch)]
        return d.std(axis=0, ddof=1) if d.shape[0] > 1 else np.zeros(d.shape[1:])

    def closest(self, arch: Optional[str] = None) -> dict:
        """For every target task, the other task closest to it (by mean; the most similar for cosine)."""
        m = self.mean(arch).copy()
        np.fill_diagonal(m, np.nan)
        pick = np.nanargmax if self.metric == "cosine" else np.nanargmin
        return {t: self.task_names[int(pick(m[:, j]))] for j, t in enumerate(self.task_names)}

    # -- trust (fisherx.experiments.trust) -------------------------------------------------------------------------------
    def draws(self, arch: Optional[str] = None) -> np.ndarray:
        """(N, K, K): every matrix behind the closest-task probabilities, seeds × bootstrap replicates pooled (the
        seeds' matrices alone without bootstrap)."""
        a = self._arch(arch)
        reps = self.replicates.get(a)
        return self.distances[a] if reps is None else reps.reshape(-1, *reps.shape[2:])

    def interval_seeds(self, arch: Optional[str] = None) -> Optional[np.ndarray]:
        """(K, K, 2): Student's t interval of the mean over seeds at ``level``; None with a single seed."""
        d = self.distances[self._arch(arch)]
        return _trust.seed_interval(d, self.level) if d.shape[0] > 1 else None

    def interval_bootstrap(self, arch: Optional[str] = None) -> Optional[np.ndarray]:
        """(S, K, K, 2): each seed's basic bootstrap interval over its test samples; None without bootstrap."""
        a = self._arch(arch)
        reps = self.replicates.get(a)
        return None if reps is None else _trust.bootstrap_interval(self.distances[a], reps, self.level, axis=1)

    def closest_probability(self, arch: Optional[str] = None) -> np.ndarray:
        """P[a, b]: the share of :meth:`draws` in which source a is the closest to target b."""
        return _trust.closest_probability(self.draws(arch), self.metric)

    def verdicts(self, arch: Optional[str] = None, threshold: float = _trust.CLEAR_WINNER) -> dict:
        """Per target: "T3 is the closest to T2 in 97% of 300 draws", or "no clear winner for T2 (T3 60%, ...)"."""
        return _trust.closest_verdicts(self.closest_probability(arch), self.task_names, len(self.draws(arch)),
                                       threshold)

    def _arch(self, arch: Optional[str]) -> str:
        if arch is None:
            return self.archs[0]
        if arch not in self.distances:
            raise KeyError(f"no architecture {arch!r} in this result; it has {', '.join(self.archs)}")
        return arch

    # -- text ------------------------------------------------------------------------------------------------
    def table(self, arch: Optional[str] = None, digits: int = 3) -> str:
        """The mean ± std matrix as text, rows = source, columns = target; all architectures when arch is None."""
        blocks = []
        for a in ([arch] if arch else self.archs):
            mean, std = self.mean(a), self.std(a)
            acc = self.accuracies[a].mean(axis=0)
            head = (f"{a}: {self.metric} {'similarity' if self.metric == 'cosine' else 'distance'}, mean ± std over "
                    f"{len(self.seeds)} seed(s), rows = source, columns = target; head: {self.head_mode} "
                    f"(width {self.head_width})")
            lines = [head] + self._grid(lambda i, j: f"{mean[i, j]:.{digits}f} ± {std[i, j]:.{digits}f}")
            lines.append("test accuracy: " + ", ".join(f"{n} {acc[i]:.3f}" for i, n in enumerate(self.task_names)))
            closest = self.closest(a)
            lines.append("closest source per target: " + ", ".join(f"{t} ← {s}" for t, s in closest.items()))
            lines += self._interval_lines(a, digits)
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def _grid(self, cell) -> list:
        """A K × K text grid, rows = source, columns = target, ``cell(i, j)`` in each place."""
        k = len(self.task_names)
        cells = [[cell(i, j) for j in range(k)] for i in range(k)]
        w = max(len(c) for row in cells for c in row)
        wn = max(len(n) for n in self.task_names + ["source"])
        lines = [f"{'source':<{wn}}  " + "  ".join(f"{n:>{w}}" for n in self.task_names)]
        for i, n in enumerate(self.task_names):
            lines.append(f"{n:<{wn}}  " + "  ".join(f"{c:>{w}}" for c in cells[i]))
        return lines

    def _interval_lines(self, a: str, digits: int) -> list:
        lines, pct = [], f"{100 * self.level:g}%"
        seeds, boot = self.interval_seeds(a), self.interval_bootstrap(a)
        if seeds is not None:
            lines.append(f"{pct} interval of the mean over seeds (Student t):")
            lines += self._grid(lambda i, j: f"[{seeds[i, j, 0]:.{digits}f}, {seeds[i, j, 1]:.{digits}f}]")
        if boot is not None:
            lo, hi = boot.mean(axis=0).transpose(2, 0, 1)
            lines.append(f"{pct} bootstrap interval over the test samples ({self.replicates[a].shape[1]} replicates, "
                         "basic), each seed's bounds averaged over the seeds:")
            lines += self._grid(lambda i, j: f"[{lo[i, j]:.{digits}f}, {hi[i, j]:.{digits}f}]")
        n = len(self.draws(a))
        what = "seeds × replicates" if boot is not None else "seeds"
        lines.append(f"closest source over {n} draws ({what}): " + "; ".join(self.verdicts(a).values()))
        return lines

    def __str__(self) -> str:
        return self.table()

    # -- files -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Everything as plain JSON-able data (per-seed matrices, means, stds, accuracies, configuration)."""
        return {
            "task_names": list(self.task_names), "archs": list(self.archs), "seeds": list(self.seeds),
            "metric": self.metric, "head_mode": self.head_mode, "head_width": self.head_width,
            "distances": {a: self.distances[a].tolist() for a in self.archs},
            "mean": {a: self.mean(a).tolist() for a in self.archs},
            "std": {a: self.std(a).tolist() for a in self.archs},
            "accuracies": {a: self.accuracies[a].tolist() for a in self.archs},
            "closest": {a: self.closest(a) for a in self.archs},
            "config": self.config, "stats": self.stats,
            "level": self.level,
            "interval_seeds": {a: _tolist(self.interval_seeds(a)) for a in self.archs},
            "interval_bootstrap": {a: _tolist(self.interval_bootstrap(a)) for a in self.archs},
            "closest_probability": {a: self.closest_probability(a).tolist() for a in self.archs},
            "verdicts": {a: self.verdicts(a) for a in self.archs},
            "replicates": {a: r.tolist() for a, r in self.replicates.items()},
            "concentration": {a: c.tolist() for a, c in self.concentration.items()},
        }

    def to_json(self, path=None) -> str:
        """The result as JSON text, also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls, text_or_path) -> "TaskDistanceResult":
        """Read back what :meth:`to_json` wrote (a JSON string or a path to it)."""
        s = str(text_or_path)
        text = s if s.lstrip().startswith("{") else Path(s).read_text(encoding="utf-8")
        d = json.loads(text)
        return cls(d["task_names"], d["archs"], d["seeds"], d["metric"],
                   {a: np.asarray(v, dtype=np.float64) for a, v in d["distances"].items()},
                   {a: np.asarray(v, dtype=np.float64) for a, v in d["accuracies"].items()},
                   d["head_mode"], d["head_width"], d.get("config", {}), d.get("stats", {}),
                   {a: np.asarray(v, dtype=np.float64) for a, v in d.get("replicates", {}).items()},
                   {a: np.asarray(v, dtype=np.float64) for a, v in d.get("concentration", {}).items()},
                   d.get("level", _trust.LEVEL))

    def to_csv(self, path=None) -> str:
        """One row per (arch, source, target): mean, std and the value of every seed."""
        rows = ["arch,source,target,mean,std," + ",".join(f"seed_{s}" for s in self.seeds)]
        for a in self.archs:
            mean, std, d = self.mean(a), self.std(a), self.distances[a]
            for i, src in enumerate(self.task_names):
                for j, tgt in enumerate(self.task_names):
                    vals = ",".join(repr(float(v)) for v in d[:, i, j])
                    rows.append(f"{a},{_csv(src)},{_csv(tgt)},{float(mean[i, j])!r},{float(std[i, j])!r},{vals}")
        text = "\n".join(rows) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    # -- plots -----------------------------------------------------------------------------------------------
    def plot_heatmaps(self, path, digits: int = 2) -> Path:
        """Heatmaps laid out like the papers' figures: one column per architecture, mean on top, std below."""
        plt = _pyplot()
        k, n = len(self.task_names), len(self.archs)
        fig, axes = plt.subplots(2, n, figsize=(1.1 * k * n + 1.5, 2.2 * k * 0.6 + 2.6), squeeze=False)
        for c, a in enumerate(self.archs):
            for r, (mat, what) in enumerate(((self.mean(a), "mean"), (self.std(a), "std"))):
                ax = axes[r, c]
                im = ax.imshow(mat, cmap="viridis" if r == 0 else "magma")
                for i in range(k):
                    for j in range(k):
                        v = mat[i, j]
                        lum = im.norm(v) if np.isfinite(v) and im.norm.vmax != im.norm.vmin else 0.0
                        ax.text(j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=8,
                                color="black" if lum > 0.6 else "white")
                ax.set_xticks(range(k), self.task_names)
                ax.set_yticks(range(k), self.task_names)
                ax.set_xlabel("target")
                ax.set_ylabel("source")
                ax.set_title(f"{a} — {what}", fontsize=10)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(f"{self.metric} over {len(self.seeds)} seed(s), head {self.head_mode}", fontsize=10)
        fig.tight_layout()
        return _save_figure(fig, path)

    def embedding(self, arch: Optional[str] = None) -> np.ndarray:
        """2-D coordinates of the tasks: classical MDS of the symmetrised mean matrix (D + Dᵀ)/2.

        The asymmetry is lost in the embedding; :meth:`plot_atlas` draws it back as arrows to each target's
        closest source. For cosine similarity, 1 − similarity is embedded.
        """
        m = self.mean(arch)
        if self.metric == "cosine":
            m = 1.0 - m
        return classical_mds((m + m.T) / 2.0)

    def plot_atlas(self, path) -> Path:
        """A task atlas per architecture: tasks placed by :meth:`embedding`, with an arrow from each target's
        closest source to it (the asymmetric information the embedding cannot show)."""
        plt = _pyplot()
        n = len(self.archs)
        fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False)
        for c, a in enumerate(self.archs):
            ax, xy = axes[0, c], self.embedding(a)
            ax.scatter(xy[:, 0], xy[:, 1], s=60, zorder=3)
            for i, name in enumerate(self.task_names):
                # Alternate label sides so that two tasks embedded close together stay readable.
                ax.annotate(name, xy[i], textcoords="offset points", xytext=(7, 5) if i % 2 == 0 else (-7, -14),
                            ha="left" if i % 2 == 0 else "right", fontsize=10)
            idx = {t: i for i, t in enumerate(self.task_names)}
            for tgt, src in self.closest(a).items():
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
        fig.suptitle(f"task atlas: classical MDS of (D + Dᵀ)/2 ({self.metric}); arrow = closest source → target",
                     fontsize=9)
        fig.tight_layout()
        return _save_figure(fig, path)


    def plot_intervals(self, path, digits: int = 2) -> Path:
        """Per architecture and target: every source's mean distance with its interval as an error bar (over seeds
        when there are several, else the bootstrap one) and, above it, its probability of being the closest."""
        plt = _pyplot()
        k, n = len(self.task_names), len(self.archs)
        fig, axes = plt.subplots(n, k, figsize=(2.6 * k + 0.5, 2.8 * n + 0.6), squeeze=False)
        for r, a in enumerate(self.archs):
            mean, prob = self.mean(a), self.closest_probability(a)
            iv = self.interval_seeds(a)
            iv = iv if iv is not None else (self.interval_bootstrap(a).mean(axis=0)
                                            if a in self.replicates else np.stack([mean, mean], axis=-1))
            for j, tgt in enumerate(self.task_names):
                ax, src = axes[r, j], [i for i in range(k) if i != j]
                m = mean[src, j]
                err = np.abs(np.stack([m - iv[src, j, 0], iv[src, j, 1] - m]))
                ax.bar(range(len(src)), m, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
                for x, i in enumerate(src):
                    ax.annotate(f"{100 * prob[i, j]:.0f}%", (x, iv[i, j, 1]), textcoords="offset points",
                                xytext=(0, 3), ha="center", fontsize=8)
                ax.set_xticks(range(len(src)), [self.task_names[i] for i in src])
                ax.set_title(f"{a}: → {tgt}", fontsize=9)
                ax.margins(y=0.2)
                if j == 0:
                    ax.set_ylabel(self.metric)
        fig.suptitle(f"mean {self.metric} per source, {100 * self.level:g}% interval; % = P(closest) over "
                     f"{len(self.draws())} draws", fontsize=9)
        fig.tight_layout()
        return _save_figure(fig, path)


def _tolist(x):
    return None if x is None else x.tolist()


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


def _csv(s: str) -> str:
    return f'"{s}"' if ("," in s or '"' in s) else s


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window (also on machines without a display)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path) -> Path:
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=130)
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------------------

def _check_family(tasks: Sequence[Task], datas: Sequence[TaskData]) -> None:
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    shapes = {(d.in_channels, d.image_size) for d in datas}
    if len(shapes) != 1:
        desc = ", ".join(f"{t.name}: {d.in_channels}×{d.image_size}×{d.image_size}" for t, d in zip(tasks, datas))
        raise ValueError("every network is evaluated on every task's data, so all tasks need images of one shape; "
                         f"got {desc} (set Task.image_size to resize)")


def _fisher_entry(fisher) -> dict:
    # Names and values as parallel lists: the order of parameters is part of a Fisher's layout.
    names = list(fisher.keys())
    entry = {"names": names, "values": [fisher[n].detach().to("cpu") for n in names],
             "n_samples": int(fisher.n_samples), "meta": dict(fisher.meta)}
    if fisher.replicates is not None:  # bootstrap=R: (R, *shape) per parameter, and the weight totals
        entry["replicates"] = [fisher.replicates[n].to("cpu") for n in names]
        entry["replicate_weights"] = fisher.replicate_weights
    return entry


def _fisher_from_entry(entry: dict):
    from ..fisher import FisherDiag

    names = entry["names"]
    reps = dict(zip(names, entry["replicates"])) if "replicates" in entry else None
    return FisherDiag(dict(zip(names, entry["values"])), entry["n_samples"], entry["meta"], replicates=reps,
                      replicate_weights=entry.get("replicate_weights"))


def task_distances(tasks: Sequence[Task], archs: Sequence[str] = ("cnn",), seeds: Sequence[int] = (0, 1, 2),
                   epochs: int = 10, metric: str = "ftd", cache_dir=None, data_dir=None, *,
                   batch_size: int = 128, lr: float = 1e-3, epsilon: Optional[float] = 0.1, head: str = "shared",
                   head_epochs: int = 5, fisher_kind: str = "empirical", fisher_samples: Optional[int] = None,
                   sigma2: float = 1e-8, device=None, progress: bool = True, bootstrap: int = 0,
                   bootstrap_seed: int = 0, level: float = _trust.LEVEL, gates: str = "warn") -> TaskDistanceResult:
    """The papers' task-distance matrices.

    For every architecture in ``archs`` and seed in ``seeds``: train an ε-approximation network N_a for every task
    a (Adam, ``batch_size``, cross-entropy, ``epochs`` epochs; weight init and batch order from the seed), compute
    F_ab = the diagonal Fisher (``fisher_kind``, on at most ``fisher_samples`` samples) of N_a on task b's test data
    for every pair, and d[a, b] = ``metric``(F_ab, F_bb) ("ftd": (1/√2)·‖√F̂_ab − √F̂_bb‖₂, "logdet", "cosine").

    Label counts differ across tasks; with ``head="shared"`` every network gets the family's largest label count
    as its head width, so F_ab is defined and covers the same parameters as F_bb (DESIGN §1). ``head="refit"``
    additionally refits a copy of N_a's head on b's training data (features frozen, ``head_epochs`` epochs)
    before taking F_ab. Every trained network and every Fisher is cached under ``cache_dir`` (keyed by its full
    configuration), so an interrupted run resumes where it stopped and gives the same result.

    Trust (docs/trust.md). ``bootstrap=R`` (default 0: none) takes every Fisher with R in-pass Poisson-bootstrap
    replicates over the test samples (``bootstrap_seed``, the same for every Fisher of a column, so d_r[a, b] is a
    paired replicate); the result then has per-seed bootstrap intervals and closest-task probabilities over
    seeds × replicates (memory: K·(R + 1)·params per column of Fishers; the cache holds the replicates too). The
    sanity gates act per ``gates``: "warn" (default), "refuse" (a fisherx.experiments.trust.GateError) or "off": a network
    below 1 − ε is refused before its Fisher is used (or named in one EpsilonWarning), a Fisher with more than half
    its trace in its 10 largest entries is flagged, and d[b, b] must be exactly 0 in every matrix and replicate.
    ``level``: the confidence level of the intervals.
    """
    from ..fisher import fisher_diag  # the Fisher engine; imported here so the rest of fisherx loads without it

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if head not in HEAD_MODES:
        raise ValueError(f"unknown head mode {head!r}; choose one of {', '.join(HEAD_MODES)}")
    if gates not in _trust.GATE_ACTIONS:
        raise ValueError(f"gates must be one of {', '.join(_trust.GATE_ACTIONS)}, got {gates!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap must be a non-negative int (replicates per Fisher), got {bootstrap!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    tasks, archs, seeds = list(tasks), list(archs), _validate.seeds(seeds)
    epochs, batch_size = _validate.count("epochs", epochs), _validate.count("batch_size", batch_size)
    head_epochs, lr = _validate.count("head_epochs", head_epochs, 0), _validate.positive("lr", lr)
    epsilon, sigma2 = _validate.epsilon(epsilon), _validate.positive("sigma2", sigma2)
    if fisher_samples is not None:
        fisher_samples = _validate.count("fisher_samples", fisher_samples)
    if len(tasks) < 2:
        raise ValueError(f"task_distances needs at least 2 tasks, got {len(tasks)}")
    if not archs or not seeds:
        raise ValueError("task_distances needs at least one architecture and one seed")
    for a in archs:
        if a not in _models.ARCHS:
            raise ValueError(f"unknown architecture {a!r}; choose one of {', '.join(_models.ARCHS)}")
    device = default_device(device)
    cache = Cache(cache_dir)
    distributed = _fxd.is_distributed()
    if distributed and cache.root is None:
        raise ValueError("under torch.distributed, task_distances needs cache_dir: a folder every rank sees, where "
                         "the ranks' units of work meet")
    datas = [t.load(data_dir) for t in tasks]
    _check_family(tasks, datas)
    width = max(d.num_classes for d in datas)
    in_ch, size = datas[0].in_channels, datas[0].image_size
    fingerprints = [d.fingerprint() for d in datas]
    train_cfg = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": "adam",
                 "loss": "cross_entropy", "selection": "best_val_accuracy", "recipe": RECIPE_VERSION}
    fisher_cfg = {"kind": fisher_kind, "max_samples": fisher_samples, "loss": "cross_entropy", "split": "test",
                  "mode": "eval", "recipe": RECIPE_VERSION}
    boot_cfg = {"replicates": bootstrap, "seed": bootstrap_seed} if bootstrap else None
    if boot_cfg:  # only then: the keys of Fishers without replicates stay those of earlier runs
        fisher_cfg["bootstrap"] = boot_cfg
    K, S = len(tasks), len(seeds)
    distances = {a: np.zeros((S, K, K)) for a in archs}
    accuracies = {a: np.zeros((S, K)) for a in archs}
    replicates = {a: np.zeros((S, bootstrap, K, K)) for a in archs} if bootstrap else {}
    concentration = {a: np.zeros((S, K, K)) for a in archs}
    steps = len(archs) * S * (K + K * K + (K * (K - 1) if head == "refit" else 0))
    # Under torch.distributed the units are spread first, then assembled from the cache: no fixed step count.
    bar = _bar(None if distributed else steps, progress and (not distributed or _fxd.is_main_process()))
    missed: list[str] = []  # networks below 1 − ε, warned about once at the end (cached or not)

    def network_config(arch, seed, i):
        return {"arch": arch, "in_channels": in_ch, "image_size": size, "head_width": width, "seed": seed,
                "task": tasks[i].config(), "data": fingerprints[i], "train": train_cfg}

    def get_network(arch, seed, i):
        cfg = network_config(arch, seed, i)
        with seeded(seed):
            model = _models.build(arch, in_ch, width, size)
        # The check loads into a copy: a refused entry must leave the freshly seeded model untouched for training.
        entry = cache.load("network", cfg, check=lambda e: (copy.deepcopy(model).load_state_dict(e["state_dict"]),
                                                             float(e["summary"]["test_accuracy"])))
        if entry is None:
            bar.set_description(f"train {arch} seed {seed} {tasks[i].name}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EpsilonWarning)  # warned once below, cached or not
                # Per-epoch checkpoints: a long training killed half-way resumes from its last epoch.
                ckpt = cache.path("training", cfg)
                res = train(model, datas[i], epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                            device=device, progress=progress, epsilon=epsilon, checkpoint=ckpt)
            entry = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "summary": res.summary()}
            cache.store("network", cfg, entry)
            if ckpt is not None:
                ckpt.unlink(missing_ok=True)
        model.load_state_dict(entry["state_dict"])
        model.to(device).eval()
        acc = float(entry["summary"]["test_accuracy"])
        if epsilon is not None and acc < 1.0 - epsilon:
            if gates == "refuse":  # before any Fisher of this network is used
                raise _trust.GateError(f"{arch} seed {seed} {tasks[i].name}: test accuracy {acc:.3f} < 1 − ε = "
                                       f"{1 - epsilon:.3f}, not an ε-approximation (gates='refuse'); train longer "
                                       "(epochs=...) or pass gates='warn'")
            missed.append(f"{arch} seed {seed} {tasks[i].name}: {acc:.3f}")
        bar.update(1)
        return model, acc, cfg

    def refit_head(model, arch, seed, i, j, net_cfg):
        cfg = {"network": net_cfg, "target_task": tasks[j].config(), "target_data": fingerprints[j],
               "head_epochs": head_epochs, "batch_size": batch_size, "lr": lr, "recipe": RECIPE_VERSION}
        probe = copy.deepcopy(model)
        entry = cache.load("head", cfg, check=probe.classifier.load_state_dict)
        if entry is None:
            bar.set_description(f"refit head {arch} seed {seed} {tasks[i].name}→{tasks[j].name}")
            with seeded(seed):
                probe.classifier.reset_parameters()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EpsilonWarning)
                train(probe, datas[j], epochs=head_epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      progress=False, epsilon=None, trainable=probe.classifier.parameters())
            entry = {k: v.detach().cpu() for k, v in probe.classifier.state_dict().items()}
            cache.store("head", cfg, entry)
        probe.classifier.load_state_dict(entry)
        bar.update(1)
        return probe.to(device).eval(), cfg

    def get_fisher(model, model_cfg, seed, j):
        cfg = {"model": model_cfg, "target_task": tasks[j].config(), "target_data": fingerprints[j],
               "fisher": fisher_cfg}
        entry = cache.load("fisher", cfg, check=_fisher_from_entry)
        if entry is None:
            bar.set_description(f"fisher → {tasks[j].name}")
            with seeded(seed, device):  # the labels drawn by kind="mc" come from the seed too
                # One unit is one whole Fisher on one rank, never a shard combined across ranks.
                f = fisher_diag(model.eval(), datas[j].test, loss="cross_entropy", kind=fisher_kind,
                                max_samples=fisher_samples, device=device, progress=False, distributed=False,
                                bootstrap=bootstrap, bootstrap_seed=bootstrap_seed)
            entry = _fisher_entry(f)
            cache.store("fisher", cfg, entry)
        bar.update(1)
        return _fisher_from_entry(entry)

    try:
        if distributed:
            _spread_units(archs, seeds, K, head, get_network, refit_head, get_fisher)
            missed.clear()  # the assembly below visits every network once more
        for arch in archs:
            for s, seed in enumerate(seeds):
                nets = [get_network(arch, seed, i) for i in range(K)]
                for i in range(K):
                    accuracies[arch][s, i] = nets[i][1]
                for j in range(K):
                    columns = []
                    for i in range(K):
                        model, _, cfg = nets[i]
                        if head == "refit" and i != j:
                            model, cfg = refit_head(model, arch, seed, i, j, cfg)
                        columns.append(get_fisher(model, cfg, seed, j))
                    names = [f"F[{tasks[i].name}→{tasks[j].name}]" for i in range(K)]
                    where = f" ({arch}, seed {seed})"
                    for i, f in enumerate(columns):
                        concentration[arch][s, i, j] = _trust.check_concentration(f, names[i] + where, gates)
                    col = distance_column(columns, columns[j], metric=metric, sigma2=sigma2, names=names,
                                          target_name=names[j])
                    col = col.cpu().numpy()
                    # d[b, b] compares F_bb with itself: exactly 0 (cosine: 1) by definition. The kernel's value
                    # differs by rounding only; anything more means a broken Fisher or kernel.
                    exact = 1.0 if metric == "cosine" else 0.0
                    if not abs(col[j] - exact) < 1e-6:
                        raise FloatingPointError(f"{metric}(F_bb, F_bb) = {col[j]!r} for {arch}, seed {seed}, task "
                                                 f"{tasks[j].name}; expected {exact}")
                    if bootstrap:
                        reps = _trust.replicate_column(columns, columns[j], metric, sigma2, names, names[j])
                        _trust.check_self_distance(np.r_[col[j], reps[:, j]], metric,
                                                   f"d[{tasks[j].name},{tasks[j].name}]{where}", gates)
                        reps[:, j] = exact
                        replicates[arch][s, :, :, j] = reps
                    col[j] = exact
                    distances[arch][s, :, j] = col
                del nets
    finally:
        bar.close()
    if missed and gates != "off":
        warnings.warn(f"{len(missed)} of {len(archs) * S * K} networks are not ε-approximations (test accuracy < "
                      f"1 − ε = {1 - epsilon:.3f}), so their distances are suspect; train longer (epochs=...): "
                      + "; ".join(missed), EpsilonWarning, stacklevel=2)
    config = {"tasks": [t.config() for t in tasks], "archs": archs, "seeds": seeds, "metric": metric,
              "sigma2": sigma2 if metric == "logdet" else None, "train": train_cfg, "fisher": fisher_cfg,
              "head": {"mode": head, "width": width, "refit_epochs": head_epochs if head == "refit" else None},
              "epsilon": epsilon, "data": {t.name: {"origin": d.origin, "fingerprint": fp, "num_classes": d.num_classes,
                                                    "train": d.train[0].shape[0], "val": d.val[0].shape[0],
                                                    "test": d.test[0].shape[0]}
                                           for t, d, fp in zip(tasks, datas, fingerprints)},
              "cache_dir": str(cache.root) if cache.root is not None else None, "device": str(device),
              "bootstrap": boot_cfg, "gates": gates, "level": level}
    for a in archs:
        if not np.all(np.isfinite(distances[a])):
            raise FloatingPointError(f"non-finite distances for {a}; the Fishers should have been refused earlier")
    return TaskDistanceResult([t.name for t in tasks], archs, seeds, metric, distances, accuracies, head, width,
                              config, dict(cache.stats), replicates, concentration, level)


def _spread_units(archs, seeds, K, head, get_network, refit_head, get_fisher) -> None:
    """Under torch.distributed: every rank trains every ``world``-th network, then computes every ``world``-th
    Fisher (refitting heads as needed); the results meet in the shared cache, from which each rank then
    assembles the matrices. A rank that dies leaves its finished units in the cache for the re-run."""
    for arch, seed, i in _fxd.assigned([(a, s, i) for a in archs for s in seeds for i in range(K)]):
        get_network(arch, seed, i)
    _fxd.barrier()
    nets: dict = {}
    for arch, seed, j, i in _fxd.assigned([(a, s, j, i) for a in archs for s in seeds for j in range(K)
                                           for i in range(K)]):
        if (arch, seed, i) not in nets:
            if len(nets) >= K:  # keep one (arch, seed)'s networks in memory at most
                nets.clear()
            nets[(arch, seed, i)] = get_network(arch, seed, i)
        model, _, cfg = nets[(arch, seed, i)]
        if head == "refit" and i != j:
            model, cfg = refit_head(model, arch, seed, i, j, cfg)
        get_fisher(model, cfg, seed, j)
    _fxd.barrier()


class _NoBar:
    def update(self, n=1):
        pass

    def set_description(self, s):
        pass

    def close(self):
        pass


def _bar(total: Optional[int], enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="task distances", unit="step")


# ---------------------------------------------------------------------------------------------------------------
# The `fisherx distances` command (its arguments are declared in fisherx/cli/main.py).

OUTPUT_FILES = ("result.json", "distances.csv", "table.txt", "heatmaps.png", "atlas.png", "intervals.png")


def distances_command(args) -> int:
    """Run :func:`task_distances` on a preset and write result.json, distances.csv, table.txt, heatmaps.png,
    atlas.png and intervals.png to ``args.out``; the cache defaults to ``OUT/cache`` so that re-running the command
    resumes."""
    from ..tasks import preset

    from ..distributed import init_from_env, is_main_process

    init_from_env(args.device)  # under torchrun: one process group, the units of work spread over the ranks
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = preset(args.preset, seed=args.task_seed, max_train_per_label=args.max_train_per_label,
                   image_size=args.image_size)
    if args.tasks:
        wanted = args.tasks.split(",")
        unknown = [t for t in wanted if t not in {x.name for x in tasks}]
        if unknown:
            raise SystemExit(f"fisherx distances: unknown task(s) {', '.join(unknown)} in preset {args.preset} "
                             f"(it has {', '.join(t.name for t in tasks)})")
        tasks = [t for t in tasks if t.name in wanted]
    try:  # data problems (missing files, wrong layout, unknown class) as one clear line, not a traceback
        for t in tasks:
            t.load(args.data_dir)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise SystemExit(f"fisherx distances: {msg}") from exc
    result = task_distances(
        tasks, archs=args.archs.split(","), seeds=[int(s) for s in args.seeds.split(",")], epochs=args.epochs,
        metric=args.metric, cache_dir=args.cache_dir or out / "cache", data_dir=args.data_dir,
        batch_size=args.batch_size, lr=args.lr, epsilon=args.epsilon, head=args.head,
        fisher_samples=args.fisher_samples, device=args.device, progress=not args.quiet, bootstrap=args.bootstrap,
        gates=args.gates)
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
