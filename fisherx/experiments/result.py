"""The result of :func:`fisherx.task_distances`: per-seed matrices d[a, b] of every architecture, their statistics
(mean, std, closest source, intervals and P(closest) from :mod:`fisherx.experiments.trust`), text, JSON and CSV.

``d[a, b]`` is the distance from source task a to target task b: F_ab is the Fisher of N_a (trained on a) on b's
test data and F_bb that of N_b on the same data. Rows are sources, columns targets, as in the papers' figures.
The figures are drawn by :mod:`fisherx.experiments.plots`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import atomic_write_text
from . import metrics as _metrics
from . import plots as _plots
from . import trust as _trust

# result.json: what it is and which layout (docs/formats.md). Bump SCHEMA_VERSION when a key changes meaning or
# goes away; adding a key keeps the version (readers ignore keys they do not know).
FORMAT = "fisherx.task_distances"
SCHEMA_VERSION = 1
CSV_COLUMNS = ("arch", "seed", "source", "target", "metric", "value")


@dataclass
class TaskDistanceResult:
    """Distances between tasks for one or more architectures, over several seeds.

    ``distances[arch]`` is an (S, K, K) float64 array, ``[s, a, b]`` = d(task a → task b) with seed ``seeds[s]``;
    ``accuracies[arch]`` is (S, K): the test accuracy of every task's network. ``head_mode`` says how networks
    with fewer labels than the family were handled ("shared": one head width for all, docs/tasks.md; "refit": N_a's
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
    def mean(self, arch: str | None = None) -> np.ndarray:
        """Mean over seeds of the (K, K) matrix of ``arch`` (the first architecture by default)."""
        return self.distances[self.resolve_arch(arch)].mean(axis=0)

    def std(self, arch: str | None = None) -> np.ndarray:
        """Sample standard deviation over seeds (ddof = 1; zeros with a single seed)."""
        d = self.distances[self.resolve_arch(arch)]
        return d.std(axis=0, ddof=1) if d.shape[0] > 1 else np.zeros(d.shape[1:])

    def closest(self, arch: str | None = None) -> dict:
        """For every target task, the other task closest to it (by mean; the most similar for cosine)."""
        m = self.mean(arch).copy()
        np.fill_diagonal(m, np.nan)
        pick = _metrics.pick_closest(self.metric, nan=True)
        return {t: self.task_names[int(pick(m[:, j]))] for j, t in enumerate(self.task_names)}

    # -- trust (fisherx.experiments.trust) -------------------------------------------------------------------
    def draws(self, arch: str | None = None) -> np.ndarray:
        """(N, K, K): every matrix behind the closest-task probabilities, seeds × bootstrap replicates pooled (the
        seeds' matrices alone without bootstrap)."""
        a = self.resolve_arch(arch)
        reps = self.replicates.get(a)
        return self.distances[a] if reps is None else reps.reshape(-1, *reps.shape[2:])

    def interval_seeds(self, arch: str | None = None) -> np.ndarray | None:
        """(K, K, 2): Student's t interval of the mean over seeds at ``level``, clipped to the metric's range
        (FTD: [0, 1]; a t interval over few seeds can reach past it); None with a single seed."""
        d = self.distances[self.resolve_arch(arch)]
        return self._clip(_trust.seed_interval(d, self.level)) if d.shape[0] > 1 else None

    def interval_bootstrap(self, arch: str | None = None) -> np.ndarray | None:
        """(S, K, K, 2): each seed's basic bootstrap interval over its test samples, clipped to the metric's
        range; None without bootstrap."""
        a = self.resolve_arch(arch)
        reps = self.replicates.get(a)
        if reps is None:
            return None
        return self._clip(_trust.bootstrap_interval(self.distances[a], reps, self.level, axis=1))

    def _clip(self, iv: np.ndarray) -> np.ndarray:
        lo, hi = _metrics.value_range(self.metric)
        return np.clip(iv, lo, hi)

    def closest_probability(self, arch: str | None = None) -> np.ndarray:
        """P[a, b]: the share of :meth:`draws` in which source a is the closest to target b."""
        return _trust.closest_probability(self.draws(arch), self.metric)

    def verdicts(self, arch: str | None = None, threshold: float = _trust.CLEAR_WINNER) -> dict:
        """Per target: "T3 is the closest to T2 in 97% of 300 draws", or "no clear winner for T2 (T3 60%, ...)"."""
        return _trust.closest_verdicts(
            self.closest_probability(arch), self.task_names, len(self.draws(arch)), threshold
        )

    def resolve_arch(self, arch: str | None) -> str:
        if arch is None:
            return self.archs[0]
        if arch not in self.distances:
            raise KeyError(f"no architecture {arch!r} in this result; it has {', '.join(self.archs)}")
        return arch

    # -- text ------------------------------------------------------------------------------------------------
    def table(self, arch: str | None = None, digits: int = 3) -> str:
        """The mean ± std matrix as text, rows = source, columns = target; all architectures when arch is None."""
        blocks = []
        for a in [arch] if arch else self.archs:
            mean, std = self.mean(a), self.std(a)
            acc = self.accuracies[a].mean(axis=0)
            head = (
                f"{a}: {self.metric} {_metrics.kind(self.metric)}, mean ± std over "
                f"{len(self.seeds)} seed(s), rows = source, columns = target; head: {self.head_mode} "
                f"(width {self.head_width})"
            )
            lines = [head] + self._grid(lambda i, j, m=mean, s=std: f"{m[i, j]:.{digits}f} ± {s[i, j]:.{digits}f}")
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
            lines.append(
                f"{pct} bootstrap interval over the test samples ({self.replicates[a].shape[1]} replicates, "
                "basic), each seed's bounds averaged over the seeds:"
            )
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
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "task_names": list(self.task_names),
            "archs": list(self.archs),
            "seeds": list(self.seeds),
            "metric": self.metric,
            "head_mode": self.head_mode,
            "head_width": self.head_width,
            "distances": {a: self.distances[a].tolist() for a in self.archs},
            "mean": {a: self.mean(a).tolist() for a in self.archs},
            "std": {a: self.std(a).tolist() for a in self.archs},
            "accuracies": {a: _nan_none(self.accuracies[a]) for a in self.archs},
            "closest": {a: self.closest(a) for a in self.archs},
            "config": self.config,
            "stats": self.stats,
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
    def from_json(cls, text_or_path) -> TaskDistanceResult:
        """Read back what :meth:`to_json` wrote (a JSON string or a path to it)."""
        s = str(text_or_path)
        text = s if s.lstrip().startswith("{") else Path(s).read_text(encoding="utf-8")
        d = json.loads(text)
        _check_schema(d, s if not s.lstrip().startswith("{") else "the JSON text")
        return cls(
            d["task_names"],
            d["archs"],
            d["seeds"],
            d["metric"],
            {a: np.asarray(v, dtype=np.float64) for a, v in d["distances"].items()},
            {a: np.asarray(v, dtype=np.float64) for a, v in d["accuracies"].items()},
            d["head_mode"],
            d["head_width"],
            d.get("config", {}),
            d.get("stats", {}),
            {a: np.asarray(v, dtype=np.float64) for a, v in d.get("replicates", {}).items()},
            {a: np.asarray(v, dtype=np.float64) for a, v in d.get("concentration", {}).items()},
            d.get("level", _trust.LEVEL),
        )

    def to_csv(self, path=None) -> str:
        """Long form, one row per (arch, seed, source, target): ``arch,seed,source,target,metric,value``. The
        columns never change with the number of seeds or tasks (statistics are a group-by away, e.g.
        ``pandas.read_csv(f).groupby(["arch", "source", "target"]).value.agg(["mean", "std"])``)."""
        rows = [",".join(CSV_COLUMNS)]
        for a in self.archs:
            d = self.distances[a]
            for s, seed in enumerate(self.seeds):
                for i, src in enumerate(self.task_names):
                    for j, tgt in enumerate(self.task_names):
                        rows.append(f"{_csv(a)},{seed},{_csv(src)},{_csv(tgt)},{self.metric},{float(d[s, i, j])!r}")
        text = "\n".join(rows) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    # -- plots (fisherx.experiments.plots: each returns a matplotlib Figure, written to ``path`` when given) ---
    def plot_heatmaps(self, path=None, *, arch: str | None = None, stat: str = "mean", ax=None, digits: int = 2):
        """Heatmaps laid out like the papers' figures: one column per architecture, mean on top, std below, on
        scales fixed by the metric. Given ``ax``, the one panel of ``arch`` and ``stat`` ("mean" or "std")."""
        if ax is not None:
            return _plots.heatmap(self, arch, stat=stat, ax=ax, path=path, digits=digits)
        return _plots.heatmaps(self, path, digits=digits)

    def embedding(self, arch: str | None = None) -> np.ndarray:
        """2-D coordinates of the tasks: classical MDS of the symmetrised mean matrix (see :func:`plots.embedding`)."""
        return _plots.embedding(self, arch)

    def embedding_fidelity(self, arch: str | None = None) -> dict:
        """Stress, explained variance and worst-kept pair of :meth:`embedding` (see
        :func:`plots.embedding_fidelity`)."""
        return _plots.embedding_fidelity(self, arch)

    def plot_atlas(self, path=None, *, arch: str | None = None, ax=None, fallback: bool = True):
        """A task atlas per architecture (given ``ax``, of ``arch``): tasks placed by :meth:`embedding`, arrows
        from each target's closest source, the embedding's fidelity in the title; a clustered heatmap where two
        dimensions are unfaithful."""
        return _plots.atlas(self, path, arch=arch, ax=ax, fallback=fallback)

    def plot_intervals(
        self, path=None, *, arch: str | None = None, target: str | None = None, ax=None, digits: int = 2
    ):
        """Per architecture and target: every source's mean with its interval and P(closest) above it (given
        ``ax``, the panel of ``arch`` and ``target``)."""
        return _plots.intervals(self, path, arch=arch, target=target, ax=ax, digits=digits)


def _check_schema(d: dict, where: str) -> None:
    """Refuse a file of another kind or of a newer schema, by name; files from before the version accepted."""
    if not isinstance(d, dict) or "task_names" not in d:
        raise ValueError(f"{where}: not a fisherx task-distance result (no 'task_names')")
    fmt, version = d.get("format", FORMAT), d.get("schema_version", 0)
    if fmt != FORMAT:
        raise ValueError(f"{where}: format {fmt!r} is not a task-distance result ({FORMAT!r})")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(
            f"{where}: schema_version {version!r} is newer than this fisherx reads ({SCHEMA_VERSION}); upgrade fisherx"
        )


def _nan_none(a: np.ndarray) -> list:
    """Accuracies as JSON: nan (no accuracy for a loss other than cross-entropy) as null (read back as nan)."""
    return np.where(np.isnan(a), None, a).tolist()


def _tolist(x):
    return None if x is None else x.tolist()


def _csv(s: str) -> str:
    return f'"{s}"' if ("," in s or '"' in s) else s
