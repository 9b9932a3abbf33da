"""Task-distance matrices as in the papers: train an ε-approximation network per task, take every network's Fisher
on every task's test data, and turn the Fishers into a matrix d[a, b] per architecture and seed.

``d[a, b]`` is the distance from source task a to target task b: F_ab is the Fisher of N_a (trained on a) on b's
test data and F_bb that of N_b on the same data. Rows are sources, columns targets, as in the papers' figures.

:func:`task_distances` runs in three steps, each a method of :class:`_Run` (which holds the run's data, cache
keys and partial matrices): the networks (:meth:`_Run.network`, trained or read from the cache), the Fisher
columns (:meth:`_Run.fisher_column`: every source's Fisher on one target's test data), and the assembly of
each column into the matrices (:meth:`_Run.assemble_column`, with the sanity gates of
:mod:`fisherx.experiments.trust`). The result type is :mod:`fisherx.experiments.result`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import _validate
from .. import distributed as _fxd
from .._progress import Progress
from ..distance import METRICS, distance_column
from ..fisher import FisherDiag, fisher_diag
from ..io.cache import Cache
from ..models.training import EpsilonWarning, default_device, seeded, train
from ..tasks import Task, TaskData
from . import metrics as _metrics
from . import networks as _networks
from . import trust as _trust
from .result import TaskDistanceResult

__all__ = ["HEAD_MODES", "RECIPE_VERSION", "TaskDistanceResult", "task_distances"]

HEAD_MODES = ("shared", "refit")
# Bump when what a trained-network or Fisher entry means changes (training recipe, Fisher definition...).
RECIPE_VERSION = 1


@dataclass(frozen=True)
class _Settings:
    """The recipe of one run: everything but the tasks, architectures, seeds, cache and device."""

    epochs: int
    metric: str
    batch_size: int
    lr: float
    epsilon: float | None
    head: str
    head_epochs: int
    fisher_kind: str
    fisher_samples: int | None
    sigma2: float
    bootstrap: int
    bootstrap_seed: int
    level: float
    gates: str

    def check(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.head not in HEAD_MODES:
            raise ValueError(f"unknown head mode {self.head!r}; choose one of {', '.join(HEAD_MODES)}")
        if self.gates not in _trust.GATE_ACTIONS:
            raise ValueError(f"gates must be one of {', '.join(_trust.GATE_ACTIONS)}, got {self.gates!r}")
        b = self.bootstrap
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ValueError(f"bootstrap must be a non-negative int (replicates per Fisher), got {b!r}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level!r}")
        # Ranges (fisherx._validate names the argument): the values are only checked here, the settings stay frozen.
        _validate.count("epochs", self.epochs)
        _validate.count("batch_size", self.batch_size)
        _validate.count("head_epochs", self.head_epochs, 0)
        _validate.positive("lr", self.lr)
        _validate.epsilon(self.epsilon)
        _validate.positive("sigma2", self.sigma2)
        if self.fisher_samples is not None:
            _validate.count("fisher_samples", self.fisher_samples)

    @property
    def self_value(self) -> float:
        """d[b, b]: what the metric gives for a Fisher compared with itself (0 for a distance, 1 for cosine)."""
        return _metrics.self_value(self.metric)


def task_distances(
    tasks: Sequence[Task],
    archs: Sequence[str] = ("cnn",),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 10,
    metric: str = "ftd",
    cache_dir=None,
    data_dir=None,
    *,
    batch_size: int = 128,
    lr: float = 1e-3,
    epsilon: float | None = 0.1,
    head: str = "shared",
    head_epochs: int = 5,
    fisher_kind: str = "empirical",
    fisher_samples: int | None = None,
    sigma2: float = 1e-8,
    device=None,
    progress: bool = True,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    level: float = _trust.LEVEL,
    gates: str = "warn",
    model=None,
    networks=None,
    loss="cross_entropy",
    train_fn=None,
    optimizer=None,
) -> TaskDistanceResult:
    """The papers' task-distance matrices.

    For every architecture in ``archs`` and seed in ``seeds``: train an ε-approximation network N_a for every task
    a (Adam, ``batch_size``, cross-entropy, ``epochs`` epochs; weight init and batch order from the seed), compute
    F_ab = the diagonal Fisher (``fisher_kind``, on at most ``fisher_samples`` samples) of N_a on task b's test data
    for every pair, and d[a, b] = ``metric``(F_ab, F_bb) ("ftd": (1/√2)·‖√F̂_ab − √F̂_bb‖₂, "logdet", "cosine").

    Label counts differ across tasks; with ``head="shared"`` every network gets the family's largest label count
    as its head width, so F_ab is defined and covers the same parameters as F_bb. ``head="refit"``
    additionally refits a copy of N_a's head on b's training data (features frozen, ``head_epochs`` epochs)
    before taking F_ab. Every trained network and every Fisher is cached under ``cache_dir`` (keyed by its full
    configuration), so an interrupted run resumes where it stopped and gives the same result.

    Trust (docs/trust.md). ``bootstrap=R`` (default 0: none) takes every Fisher with R in-pass Poisson-bootstrap
    replicates over the test samples (``bootstrap_seed``, the same for every Fisher of a column, so d_r[a, b] is a
    paired replicate); the result then has per-seed bootstrap intervals and closest-task probabilities over
    seeds × replicates (memory: K·(R + 1)·params per column of Fishers; the cache holds the replicates too). The
    sanity gates act per ``gates``: "warn" (default), "refuse" (a fisherx.experiments.trust.GateError) or "off": a
    network below 1 − ε is refused before its Fisher is used (or named in one EpsilonWarning), a Fisher with more than
    half its trace in its 10 largest entries is flagged, and d[b, b] must be exactly 0 in every matrix and replicate.
    ``level``: the confidence level of the intervals.

    Your own networks (docs/your-tasks.md). ``model``: a factory ``factory(num_outputs) -> nn.Module`` (or a dict
    name → factory / built-in name) used instead of ``archs``; its output must have the family's head width.
    ``networks={task name: trained module}``: ready ε-networks, one per task, used as they are (no training, one
    "seed"). ``loss``: the per-sample loss of training and Fishers: "cross_entropy", "mse" (regression /
    autoencoding targets) or a callable ``loss(output, target) -> (B,)``. ``train_fn(model, task_data, seed=...)``
    trains a network in place instead of :func:`fisherx.models.train`; ``optimizer(params) -> torch.optim``
    replaces its Adam (where ``train`` takes it). Networks from a factory are cached by a hash of their structure
    and initial weights, given networks by a hash of their weights.
    """
    settings = _Settings(
        epochs,
        metric,
        batch_size,
        lr,
        epsilon,
        head,
        head_epochs,
        fisher_kind,
        fisher_samples,
        sigma2,
        bootstrap,
        bootstrap_seed,
        level,
        gates,
    )
    settings.check()
    tasks, archs, seeds = list(tasks), list(archs), _validate.seeds(seeds)
    if len(tasks) < 2:
        raise ValueError(f"task_distances needs at least 2 tasks, got {len(tasks)}")
    if not archs or not seeds:
        raise ValueError("task_distances needs at least one architecture and one seed")
    user = _networks.plan(tasks, archs, seeds, model, networks, loss, train_fn, optimizer, head)
    archs, seeds = user.archs, user.seeds
    cache = Cache(cache_dir)
    distributed = _fxd.is_distributed()
    if distributed and cache.root is None:
        raise ValueError(
            "under torch.distributed, task_distances needs cache_dir: a folder every rank sees, where "
            "the ranks' units of work meet"
        )
    run = _Run(tasks, archs, seeds, settings, cache, default_device(device), data_dir, distributed, progress, user)
    try:
        if distributed:
            run.spread_units()
        for arch in archs:
            for s, seed in enumerate(seeds):
                run.matrix(arch, s, seed)
    finally:
        run.bar.close()
    run.warn_missed()
    return run.result()


class _Run:
    """The state of one :func:`task_distances` call: the family's data, the configurations every cache key is
    built from, the cache, the progress bar, and the matrices being filled."""

    def __init__(
        self,
        tasks,
        archs,
        seeds,
        settings: _Settings,
        cache: Cache,
        device,
        data_dir,
        distributed: bool,
        progress: bool,
        user: _networks.UserNetworks,
    ):
        self.tasks, self.archs, self.seeds, self.s, self.user = tasks, archs, seeds, settings, user
        self.cache, self.device = cache, device
        self.datas = [t.load(data_dir) for t in tasks]
        _check_family(tasks, self.datas)
        self.width = max(d.num_classes for d in self.datas)
        self.target_shape = None if user.loss == "cross_entropy" else tuple(self.datas[0].test[1].shape[1:])
        self.in_ch, self.size = self.datas[0].in_channels, self.datas[0].image_size
        self.fingerprints = [d.fingerprint() for d in self.datas]
        st = settings
        self.train_cfg = {
            "epochs": st.epochs,
            "batch_size": st.batch_size,
            "lr": st.lr,
            "optimizer": "adam",
            "loss": user.loss_key,
            "selection": "best_val_accuracy",
            "recipe": RECIPE_VERSION,
        }
        if user.train_fn is not None or user.optimizer is not None:  # only then: default keys stay as they were
            self.train_cfg["custom"] = {
                "train_fn": _networks.qualname(user.train_fn),
                "optimizer": _networks.qualname(user.optimizer),
            }
        self.fisher_cfg = {
            "kind": st.fisher_kind,
            "max_samples": st.fisher_samples,
            "loss": user.loss_key,
            "split": "test",
            "mode": "eval",
            "recipe": RECIPE_VERSION,
        }
        self.boot_cfg = {"replicates": st.bootstrap, "seed": st.bootstrap_seed} if st.bootstrap else None
        if self.boot_cfg:  # only then: the keys of Fishers without replicates stay those of earlier runs
            self.fisher_cfg["bootstrap"] = self.boot_cfg
        K, S = len(tasks), len(seeds)
        self.distances = {a: np.zeros((S, K, K)) for a in archs}
        self.accuracies = {a: np.zeros((S, K)) for a in archs}
        self.replicates = {a: np.zeros((S, st.bootstrap, K, K)) for a in archs} if st.bootstrap else {}
        self.concentration = {a: np.zeros((S, K, K)) for a in archs}
        steps = len(archs) * S * (K + K * K + (K * (K - 1) if st.head == "refit" else 0))
        # Under torch.distributed the units are spread first, then assembled from the cache: no fixed step count.
        self.progress = progress
        self.bar = Progress(
            total=None if distributed else steps,
            desc="task distances",
            unit="step",
            enabled=progress and (not distributed or _fxd.is_main_process()),
        )
        self.missed: list[str] = []  # networks below 1 − ε, warned about once at the end (cached or not)

    # -- step 1: the networks ----------------------------------------------------------------------------------
    def network_config(self, arch: str, seed: int, i: int, net=None) -> dict:
        cfg = {
            "arch": arch,
            "in_channels": self.in_ch,
            "image_size": self.size,
            "head_width": self.width,
            "seed": seed,
            "task": self.tasks[i].config(),
            "data": self.fingerprints[i],
            "train": self.train_cfg,
        }
        if net is not None:  # the user's factory: what it built (structure and initial weights) is the key
            cfg["initial"] = _networks.state_sha256(net)
        return cfg

    def network(self, arch: str, seed: int, i: int):
        """N_i of (arch, seed), trained on task i (or read from the cache): (model in eval mode, test accuracy,
        its cache configuration)."""
        st, user = self.s, self.user
        if user.given is not None:
            return self.given_network(i)
        with seeded(seed):
            model = user.build[arch](self.in_ch, self.width, self.size)
        _networks.check_head(model, self.datas[i].train[0][:2], self.width, arch, self.target_shape)
        cfg = self.network_config(arch, seed, i, model if arch in user.factories else None)
        # The check loads into a copy: a refused entry must leave the freshly seeded model untouched for training.
        entry = self.cache.load(
            "network", cfg, check=lambda e: (copy.deepcopy(model).load_state_dict(e["state_dict"]), e["summary"])
        )
        if entry is None:
            self.bar.set_description(f"train {arch} seed {seed} {self.tasks[i].name}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EpsilonWarning)  # warned once below, cached or not
                # Per-epoch checkpoints: a long training killed half-way resumes from its last epoch.
                ckpt = self.cache.path("training", cfg) if user.train_fn is None else None
                if user.train_fn is not None:
                    _networks.run_train_fn(user.train_fn, model, self.datas[i], seed, self.device)
                    summary = {"test_accuracy": _networks.accuracy(model, self.datas[i], user.loss, self.device)}
                else:
                    summary = self.train(
                        model,
                        i,
                        seed,
                        st.epochs,
                        progress=self.progress,
                        epsilon=st.epsilon,
                        checkpoint=ckpt,
                        **user.extra_train,
                    ).summary()
            entry = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "summary": summary}
            self.cache.store("network", cfg, entry)
            if ckpt is not None:
                ckpt.unlink(missing_ok=True)
        model.load_state_dict(entry["state_dict"])
        model.to(self.device).eval()
        return self._judged(model, entry["summary"].get("test_accuracy"), f"{arch} seed {seed}", i, cfg)

    def train(self, model, i: int, seed: int, epochs: int, **options):
        """:func:`train` ``model`` on task i's data with the run's batch size, learning rate and device (every
        network and head of a run shares them); ``options``: progress, ε and the rest of train's."""
        return train(
            model,
            self.datas[i],
            epochs=epochs,
            batch_size=self.s.batch_size,
            lr=self.s.lr,
            seed=seed,
            device=self.device,
            **options,
        )

    def given_network(self, i: int):
        """networks[task i] as given (no training): (model in eval mode, test accuracy, its cache configuration)."""
        name, user = self.tasks[i].name, self.user
        net = user.given[name].to(self.device).eval()
        _networks.check_head(
            net, self.datas[i].train[0][:2].to(self.device), self.width, f"networks[{name!r}]", self.target_shape
        )
        cfg = {"given": _networks.state_sha256(net), "task": self.tasks[i].config(), "data": self.fingerprints[i]}
        return self._judged(
            net, _networks.accuracy(net, self.datas[i], user.loss, self.device), _networks.GIVEN, i, cfg
        )

    def _judged(self, model, acc, what: str, i: int, cfg: dict):
        acc = float("nan") if acc is None else float(acc)  # nan: no accuracy for a loss other than cross-entropy
        self._gate_accuracy(f"{what} {self.tasks[i].name}", acc)
        self.bar.update(1)
        return model, acc, cfg

    def _gate_accuracy(self, what: str, acc: float) -> None:
        eps = self.s.epsilon
        if eps is None or not acc < 1.0 - eps:  # nan (no accuracy for this loss) passes
            return
        if self.s.gates == "refuse":  # before any Fisher of this network is used
            raise _trust.GateError(
                f"{what}: test accuracy {acc:.3f} < 1 − ε = {1 - eps:.3f}, not an "
                "ε-approximation (gates='refuse'); train longer (epochs=...) or pass gates='warn'"
            )
        self.missed.append(f"{what}: {acc:.3f}")

    def refit_head(self, model, arch: str, seed: int, i: int, j: int, net_cfg: dict):
        """A copy of N_i whose head is refitted on task j's training data, features frozen (``head="refit"``)."""
        st = self.s
        cfg = {
            "network": net_cfg,
            "target_task": self.tasks[j].config(),
            "target_data": self.fingerprints[j],
            "head_epochs": st.head_epochs,
            "batch_size": st.batch_size,
            "lr": st.lr,
            "recipe": RECIPE_VERSION,
        }
        probe = copy.deepcopy(model)
        entry = self.cache.load("head", cfg, check=probe.classifier.load_state_dict)
        if entry is None:
            self.bar.set_description(f"refit head {arch} seed {seed} {self.tasks[i].name}→{self.tasks[j].name}")
            with seeded(seed):
                probe.classifier.reset_parameters()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EpsilonWarning)
                self.train(
                    probe,
                    j,
                    seed,
                    st.head_epochs,
                    progress=False,
                    epsilon=None,
                    trainable=probe.classifier.parameters(),
                )
            entry = {k: v.detach().cpu() for k, v in probe.classifier.state_dict().items()}
            self.cache.store("head", cfg, entry)
        probe.classifier.load_state_dict(entry)
        self.bar.update(1)
        return probe.to(self.device).eval(), cfg

    # -- step 2: the Fisher columns ----------------------------------------------------------------------------
    def fisher(self, model, model_cfg: dict, arch: str, seed: int, i: int, j: int):
        """The diagonal Fisher of ``model`` (source task i's network) on task j's test data (or read from the
        cache)."""
        st = self.s
        cfg = {
            "model": model_cfg,
            "target_task": self.tasks[j].config(),
            "target_data": self.fingerprints[j],
            "fisher": self.fisher_cfg,
        }
        entry = self.cache.load("fisher", cfg, check=_fisher_from_entry)
        if entry is None:
            self.bar.set_description(f"fisher {arch} seed {seed} {self.tasks[i].name}→{self.tasks[j].name}")
            with seeded(seed, self.device):  # the labels drawn by kind="mc" come from the seed too
                # One unit is one whole Fisher on one rank, never a shard combined across ranks.
                f = fisher_diag(
                    model.eval(),
                    self.datas[j].test,
                    loss=self.user.loss,
                    kind=st.fisher_kind,
                    max_samples=st.fisher_samples,
                    device=self.device,
                    progress=False,
                    distributed=False,
                    bootstrap=st.bootstrap,
                    bootstrap_seed=st.bootstrap_seed,
                )
            entry = _fisher_entry(f)
            self.cache.store("fisher", cfg, entry)
        self.bar.update(1)
        return _fisher_from_entry(entry)

    def fisher_column(self, nets: list, arch: str, seed: int, j: int) -> list:
        """[F_ij for every source i]: each source network's Fisher on target j (its head refitted on j first
        with ``head="refit"``)."""
        columns = []
        for i, (model, _, cfg) in enumerate(nets):
            if self.s.head == "refit" and i != j:
                model, cfg = self.refit_head(model, arch, seed, i, j, cfg)
            columns.append(self.fisher(model, cfg, arch, seed, i, j))
        return columns

    # -- step 3: assembly --------------------------------------------------------------------------------------
    def matrix(self, arch: str, s: int, seed: int) -> None:
        """Fill the (K, K) matrix of (arch, seed): the networks, then one Fisher column per target."""
        K = len(self.tasks)
        nets = [self.network(arch, seed, i) for i in range(K)]
        for i in range(K):
            self.accuracies[arch][s, i] = nets[i][1]
        for j in range(K):
            self.assemble_column(arch, s, seed, j, self.fisher_column(nets, arch, seed, j))

    def assemble_column(self, arch: str, s: int, seed: int, j: int, columns: list) -> None:
        """d[:, j] (and its bootstrap replicates) from the Fishers F_ij, after the concentration and d[j, j] gates."""
        st, tasks = self.s, self.tasks
        names = [f"F[{t.name}→{tasks[j].name}]" for t in tasks]
        where = f" ({arch}, seed {seed})"
        for i, f in enumerate(columns):
            self.concentration[arch][s, i, j] = _trust.check_concentration(f, names[i] + where, st.gates)
        col = (
            distance_column(columns, columns[j], metric=st.metric, sigma2=st.sigma2, names=names, target_name=names[j])
            .cpu()
            .numpy()
        )
        # d[b, b] compares F_bb with itself: exactly 0 (cosine: 1) by definition. The kernel's value differs by
        # rounding only; anything more means a broken Fisher or kernel.
        exact = st.self_value
        if not abs(col[j] - exact) < 1e-6:
            raise FloatingPointError(
                f"{st.metric}(F_bb, F_bb) = {col[j]!r} for {arch}, seed {seed}, task {tasks[j].name}; expected {exact}"
            )
        if st.bootstrap:
            reps = _trust.replicate_column(columns, columns[j], st.metric, st.sigma2, names, names[j])
            _trust.check_self_distance(
                np.r_[col[j], reps[:, j]], st.metric, f"d[{tasks[j].name},{tasks[j].name}]{where}", st.gates
            )
            reps[:, j] = exact
            self.replicates[arch][s, :, :, j] = reps
        col[j] = exact
        self.distances[arch][s, :, j] = col

    def spread_units(self) -> None:
        """Under torch.distributed: every rank trains every ``world``-th network, then computes every ``world``-th
        Fisher (refitting heads as needed); the results meet in the shared cache, from which each rank then
        assembles the matrices. A rank that dies leaves its finished units in the cache for the re-run."""
        K = len(self.tasks)
        for arch, seed, i in _fxd.assigned([(a, s, i) for a in self.archs for s in self.seeds for i in range(K)]):
            self.network(arch, seed, i)
        _fxd.barrier()
        nets: dict = {}
        units = [(a, s, j, i) for a in self.archs for s in self.seeds for j in range(K) for i in range(K)]
        for arch, seed, j, i in _fxd.assigned(units):
            if (arch, seed, i) not in nets:
                if len(nets) >= K:  # keep one (arch, seed)'s networks in memory at most
                    nets.clear()
                nets[(arch, seed, i)] = self.network(arch, seed, i)
            model, _, cfg = nets[(arch, seed, i)]
            if self.s.head == "refit" and i != j:
                model, cfg = self.refit_head(model, arch, seed, i, j, cfg)
            self.fisher(model, cfg, arch, seed, i, j)
        _fxd.barrier()
        self.missed.clear()  # the assembly visits every network once more

    # -- the result --------------------------------------------------------------------------------------------
    def warn_missed(self) -> None:
        if self.missed and self.s.gates != "off":
            n = len(self.archs) * len(self.seeds) * len(self.tasks)
            warnings.warn(
                f"{len(self.missed)} of {n} networks are not ε-approximations (test accuracy < 1 − ε = "
                f"{1 - self.s.epsilon:.3f}), so their distances are suspect; train longer (epochs=...): "
                + "; ".join(self.missed),
                EpsilonWarning,
                stacklevel=3,
            )

    def config(self) -> dict:
        st = self.s
        data = {
            t.name: {
                "origin": d.origin,
                "fingerprint": fp,
                "num_classes": d.num_classes,
                "train": d.train[0].shape[0],
                "val": d.val[0].shape[0],
                "test": d.test[0].shape[0],
            }
            for t, d, fp in zip(self.tasks, self.datas, self.fingerprints, strict=True)
        }
        user = self.user
        kind = "given" if user.given is not None else ("factory" if user.factories else "built-in")
        return {
            "tasks": [t.config() for t in self.tasks],
            "archs": self.archs,
            "seeds": self.seeds,
            "networks": kind,
            "metric": st.metric,
            "sigma2": st.sigma2 if st.metric == "logdet" else None,
            "train": self.train_cfg,
            "fisher": self.fisher_cfg,
            "head": {
                "mode": st.head,
                "width": self.width,
                "refit_epochs": st.head_epochs if st.head == "refit" else None,
            },
            "epsilon": st.epsilon,
            "data": data,
            "cache_dir": str(self.cache.root) if self.cache.root is not None else None,
            "device": str(self.device),
            "bootstrap": self.boot_cfg,
            "gates": st.gates,
            "level": st.level,
        }

    def result(self) -> TaskDistanceResult:
        for a in self.archs:
            if not np.all(np.isfinite(self.distances[a])):
                raise FloatingPointError(f"non-finite distances for {a}; the Fishers should have been refused earlier")
        st = self.s
        return TaskDistanceResult(
            [t.name for t in self.tasks],
            self.archs,
            self.seeds,
            st.metric,
            self.distances,
            self.accuracies,
            st.head,
            self.width,
            self.config(),
            dict(self.cache.stats),
            self.replicates,
            self.concentration,
            st.level,
        )


def _check_family(tasks: Sequence[Task], datas: Sequence[TaskData]) -> None:
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    shapes = {(tuple(d.train[0].shape[1:]), d.train[0].dtype) for d in datas}
    if len(shapes) != 1:
        desc = ", ".join(
            f"{t.name}: {tuple(d.train[0].shape[1:])} {str(d.train[0].dtype).replace('torch.', '')}"
            for t, d in zip(tasks, datas, strict=True)
        )
        raise ValueError(
            "every network is evaluated on every task's data, so all tasks need inputs of one shape "
            f"and dtype; got {desc} (images: set Task.image_size to resize)"
        )


def _fisher_entry(fisher) -> dict:
    # Names and values as parallel lists: the order of parameters is part of a Fisher's layout.
    names = list(fisher.keys())
    entry = {
        "names": names,
        "values": [fisher[n].detach().to("cpu") for n in names],
        "n_samples": int(fisher.n_samples),
        "meta": dict(fisher.meta),
    }
    if fisher.replicates is not None:  # bootstrap=R: (R, *shape) per parameter, and the weight totals
        entry["replicates"] = [fisher.replicates[n].to("cpu") for n in names]
        entry["replicate_weights"] = fisher.replicate_weights
    return entry


def _fisher_from_entry(entry: dict):
    names = entry["names"]
    reps = dict(zip(names, entry["replicates"], strict=True)) if "replicates" in entry else None
    return FisherDiag(
        dict(zip(names, entry["values"], strict=True)),
        entry["n_samples"],
        entry["meta"],
        replicates=reps,
        replicate_weights=entry.get("replicate_weights"),
    )
