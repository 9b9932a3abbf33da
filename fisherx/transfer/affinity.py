"""Brute-force transfer affinity (Taskonomy) beside the Fisher Task Distance, for one family of tasks.

For every seed s, every source task a and every target task b:

- N_a: the ε-network trained from scratch on a (``source_epochs`` epochs);
- F_ab: the Fisher of N_a on b's test data, and d[a, b] = FTD(F_ab, F_bb) (rows = sources, columns = targets);
- N_a→b: a copy of N_a fine-tuned on b's training data for ``budget`` epochs, and L[a, b] its mean test loss on b;
- N_∅→b: a fresh network trained on b for the same ``budget`` epochs, L_∅[b] its test loss.

Two affinity matrices (higher = a is the better source for b), both asymmetric:

- gain[a, b] = 1 − L[a, b] / L_∅[b]: the share of the from-scratch loss that starting from N_a removes;
- ahp[a, b]: Taskonomy's normalisation by the analytic hierarchy process, per target b: w_ij is the fraction of
  b's test samples on which N_i→b has the lower loss than N_j→b (ties count half); the ratios
  W_ij = w_ij / w_ji (clipped to [10⁻³, 10³]) form a positive reciprocal matrix whose principal eigenvector,
  scaled to sum 1 over the sources, is the column ahp[:, b]. It uses only who wins on how many samples, so it is
  insensitive to the targets' loss scales.

Every network, Fisher and fine-tuned loss vector is an entry of :class:`fisherx.io.cache.Cache` (kinds
``pixel_network``, ``pixel_fisher``, ``transfer``, ``scratch``): a killed run resumes where it stopped and ends
with the same numbers. Each entry stores the seconds it took, so the compute of both methods is known even when
everything came from the cache.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import models as _models
from ..distance import distance_column
from ..fisher import FisherDiag, fisher_diag
from ..io.cache import Cache
from ..models.training import default_device, loss_name, per_sample_losses, seeded, train

RECIPE_VERSION = 1
AHP_CLIP = 1e3


@dataclass
class AffinityResult:
    """FTD and transfer affinities of one task family over seeds.

    Arrays are indexed ``[s, a, b]`` (seed, source, target): ``ftd`` the FTD d[a, b]; ``fine_tuned_loss`` L[a, b];
    ``gain`` and ``ahp`` the two affinities (module docstring). ``scratch_loss`` (S, K): L_∅[b];
    ``source_loss`` (S, K): N_a's test loss on its own task a. ``seconds``: wall time per stage summed over the
    run ("sources", "fishers", "fine_tunes", "scratch"), measured when each entry was computed.
    """

    task_names: list
    seeds: list
    ftd: np.ndarray
    fine_tuned_loss: np.ndarray
    scratch_loss: np.ndarray
    source_loss: np.ndarray
    gain: np.ndarray
    ahp: np.ndarray
    seconds: dict
    config: dict = field(default_factory=dict)

    def affinity(self, kind: str = "ahp") -> np.ndarray:
        """(S, K, K): the ``"ahp"`` or ``"gain"`` affinity."""
        if kind not in ("ahp", "gain"):
            raise ValueError(f"affinity kind must be 'ahp' or 'gain', got {kind!r}")
        return self.ahp if kind == "ahp" else self.gain

    def cost(self) -> dict:
        """Wall seconds of each method: FTD = train the K sources + K² Fishers; brute force = the same sources +
        K² fine-tunes + K from-scratch runs (the sources are shared); and the ratio brute force / FTD."""
        s = self.seconds
        ftd = s["sources"] + s["fishers"]
        brute = s["sources"] + s["fine_tunes"] + s["scratch"]
        return {
            "ftd_seconds": ftd,
            "brute_force_seconds": brute,
            "ratio": brute / ftd if ftd > 0 else float("inf"),
            "marginal_ratio": (s["fine_tunes"] + s["scratch"]) / s["fishers"] if s["fishers"] > 0 else None,
            **{f"{k}_seconds": v for k, v in s.items()},
        }

    def to_dict(self) -> dict:
        """Everything as plain JSON-able data (nested lists)."""
        arrays = {
            k: getattr(self, k).tolist()
            for k in ("ftd", "fine_tuned_loss", "scratch_loss", "source_loss", "gain", "ahp")
        }
        return {
            "format": "fisherx.affinity",
            "version": 1,
            "tasks": list(self.task_names),
            "seeds": list(self.seeds),
            **arrays,
            "cost": self.cost(),
            "config": self.config,
        }


def ahp_affinity(losses: torch.Tensor | np.ndarray, clip: float = AHP_CLIP) -> np.ndarray:
    """Taskonomy's AHP affinities of K sources for one target from their (K, N) per-sample test losses.

    w_ij = (#{n: ℓ_in < ℓ_jn} + ½·#{n: ℓ_in = ℓ_jn}) / N; W_ij = clip(w_ij / w_ji, 1/clip, clip); the result is
    the principal (Perron) eigenvector of W scaled to sum 1: (K,), larger = the better source.
    """
    ell = np.asarray(losses, dtype=np.float64)
    if ell.ndim != 2 or ell.shape[1] == 0:
        raise ValueError(f"ahp_affinity: losses must be (sources, samples) with samples > 0, got {ell.shape}")
    less = (ell[:, None, :] < ell[None, :, :]).mean(axis=2)
    ties = (ell[:, None, :] == ell[None, :, :]).mean(axis=2)
    w = less + 0.5 * ties
    with np.errstate(divide="ignore"):
        ratio = np.clip(w / w.T, 1.0 / clip, clip)
    vals, vecs = np.linalg.eig(ratio)
    v = np.abs(vecs[:, int(np.argmax(vals.real))].real)
    return v / v.sum()


def _config_base(task, data, seed: int, arch: str, epochs: int, batch_size: int, lr: float, loss) -> dict:
    return {
        "recipe": RECIPE_VERSION,
        "task": task.config(),
        "data": data.fingerprint(),
        "arch": arch,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "loss": loss_name(loss),
    }


def fresh_copy(arch: str, data, seed: int) -> torch.nn.Module:
    with seeded(seed):
        return _models.build(arch, data.in_channels, data.out_channels, data.image_size)


def _timed(compute):
    start = time.perf_counter()
    value = compute()
    value["seconds"] = time.perf_counter() - start
    return value


def fisher_value(model, data, loss, samples: int | None, device) -> dict:
    x, y = data.test
    with warnings.catch_warnings():  # the transposed conv's fallback rule is expected here; do not repeat it K² times
        warnings.filterwarnings("ignore", message=".*no per-layer rule.*")
        f = fisher_diag(model, (x, y), loss=loss, max_samples=samples, device=device, progress=False)
    # The cache gives dicts back with sorted keys: keep the parameter order, so that the flat vectors (and the
    # distances' rounding) are the same whether a Fisher was just computed or read back.
    return {"tensors": dict(f.tensors), "names": list(f.tensors), "n": f.n_samples}


def as_fisher(value: dict) -> FisherDiag:
    return FisherDiag({n: value["tensors"][n] for n in value["names"]}, value["n"])


class _Run:
    """The cached pieces of one affinity run (one seed at a time)."""

    def __init__(
        self, tasks, datas, cache: Cache, arch, source_epochs, budget, batch_size, lr, loss, samples, device, progress
    ):
        self.tasks, self.datas, self.cache, self.arch = tasks, datas, cache, arch
        self.source_epochs, self.budget, self.batch_size, self.lr, self.loss = (
            source_epochs,
            budget,
            batch_size,
            lr,
            loss,
        )
        self.samples, self.device, self.progress = samples, device, progress

    def _train(self, model, data, epochs: int, seed: int):
        return train(
            model,
            data,
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            device=self.device,
            progress=self.progress,
            epsilon=None,
            loss=self.loss,
        )

    def network(self, a: int, seed: int) -> tuple[torch.nn.Module, dict]:
        """N_a for this seed: (the model, its cache value with its test loss and seconds)."""
        task, data = self.tasks[a], self.datas[a]
        cfg = _config_base(task, data, seed, self.arch, self.source_epochs, self.batch_size, self.lr, self.loss)

        def compute():
            r = self._train(fresh_copy(self.arch, data, seed), data, self.source_epochs, seed)
            return {"state": {k: v.detach().cpu() for k, v in r.model.state_dict().items()}, "test_loss": r.test_loss}

        value = self.cache.get_or_compute("pixel_network", cfg, lambda: _timed(compute))
        model = fresh_copy(self.arch, data, seed)
        model.load_state_dict(value["state"])
        return model.to(self.device).eval(), value

    def fisher(self, a: int, b: int, seed: int, model) -> dict:
        cfg = {
            "network": _config_base(
                self.tasks[a], self.datas[a], seed, self.arch, self.source_epochs, self.batch_size, self.lr, self.loss
            ),
            "on": self.tasks[b].config(),
            "on_data": self.datas[b].fingerprint(),
            "samples": self.samples,
        }
        return self.cache.get_or_compute(
            "pixel_fisher",
            cfg,
            lambda: _timed(lambda: fisher_value(model, self.datas[b], self.loss, self.samples, self.device)),
        )

    def fine_tune(self, a: int, b: int, seed: int, model) -> dict:
        data = self.datas[b]
        cfg = {
            "network": _config_base(
                self.tasks[a], self.datas[a], seed, self.arch, self.source_epochs, self.batch_size, self.lr, self.loss
            ),
            "target": _config_base(
                self.tasks[b], data, seed, self.arch, self.budget, self.batch_size, self.lr, self.loss
            ),
        }

        def compute():
            r = self._train(copy.deepcopy(model), data, self.budget, seed)
            return {"losses": per_sample_losses(r.model, *data.test, self.loss), "test_loss": r.test_loss}

        return self.cache.get_or_compute("transfer", cfg, lambda: _timed(compute))

    def scratch(self, b: int, seed: int) -> dict:
        data = self.datas[b]
        cfg = _config_base(self.tasks[b], data, seed, self.arch, self.budget, self.batch_size, self.lr, self.loss)

        def compute():
            # A different initialisation from the sources' (seed + 10⁶), so that scratch never equals N_b.
            r = self._train(fresh_copy(self.arch, data, seed + 1_000_000), data, self.budget, seed)
            return {"losses": per_sample_losses(r.model, *data.test, self.loss), "test_loss": r.test_loss}

        return self.cache.get_or_compute("scratch", cfg, lambda: _timed(compute))


def transfer_affinity(
    tasks: Sequence,
    *,
    seeds: Sequence[int] = (0,),
    arch: str = "autoencoder",
    source_epochs: int = 10,
    budget: int = 2,
    batch_size: int = 64,
    lr: float = 1e-3,
    loss="mse",
    fisher_samples: int | None = None,
    cache_dir=None,
    data_dir=None,
    device=None,
    progress: bool = False,
) -> AffinityResult:
    """FTD matrix and brute-force transfer affinities of ``tasks`` (pixel tasks or any with ``load()`` giving
    ``train``/``val``/``test`` input–target pairs, ``in_channels``, ``out_channels``, ``image_size``).

    The papers' recipe by default: the autoencoder ε-network, Adam, batch 64, the per-sample loss ½‖f(x) − y‖²
    (``loss`` may be any per-sample loss accepted by :func:`fisherx.models.train`). ``budget``: the fine-tuning
    (and from-scratch) epochs; ``source_epochs``: the sources' training epochs. ``cache_dir``: where every piece
    is cached (None: nothing is stored, nothing resumes). See the module docstring for what is computed.
    """
    tasks = list(tasks)
    names = [t.name for t in tasks]
    if len(tasks) < 2:
        raise ValueError(f"transfer_affinity: needs at least 2 tasks, got {len(tasks)}")
    if len(set(names)) != len(names):
        raise ValueError(f"transfer_affinity: task names must be unique, got {names}")
    for what, v in (("source_epochs", source_epochs), ("budget", budget)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"transfer_affinity: {what} must be a positive int, got {v!r}")
    if not seeds:
        raise ValueError("transfer_affinity: give at least one seed")
    device = default_device(device)
    datas = [t.load(data_dir) for t in tasks]
    shapes = {n: (d.in_channels, d.out_channels, d.image_size) for n, d in zip(names, datas, strict=True)}
    if len(set(shapes.values())) != 1:
        raise ValueError(
            "transfer_affinity: every task needs the same input/target channels and image size, so that "
            f"one ε-network fits all; got (in, out, size) = {shapes}"
        )
    run = _Run(
        tasks,
        datas,
        Cache(cache_dir),
        arch,
        source_epochs,
        budget,
        batch_size,
        lr,
        loss,
        fisher_samples,
        device,
        progress,
    )
    k, s_count = len(tasks), len(seeds)
    out = {n: np.zeros((s_count, k, k)) for n in ("ftd", "loss", "gain", "ahp")}
    scratch_loss, source_loss = np.zeros((s_count, k)), np.zeros((s_count, k))
    seconds = {"sources": 0.0, "fishers": 0.0, "fine_tunes": 0.0, "scratch": 0.0}
    for si, seed in enumerate(seeds):
        nets = []
        for a in range(k):
            model, value = run.network(a, seed)
            nets.append(model)
            source_loss[si, a] = value["test_loss"]
            seconds["sources"] += value["seconds"]
        for b in range(k):
            fishers = [run.fisher(a, b, seed, nets[a]) for a in range(k)]
            seconds["fishers"] += sum(f["seconds"] for f in fishers)
            fd = [as_fisher(f) for f in fishers]
            out["ftd"][si, :, b] = distance_column(fd, fd[b], names=names, target_name=names[b]).numpy()
            tuned = [run.fine_tune(a, b, seed, nets[a]) for a in range(k)]
            base = run.scratch(b, seed)
            seconds["fine_tunes"] += sum(t["seconds"] for t in tuned)
            seconds["scratch"] += base["seconds"]
            out["loss"][si, :, b] = [t["test_loss"] for t in tuned]
            scratch_loss[si, b] = base["test_loss"]
            out["gain"][si, :, b] = 1.0 - out["loss"][si, :, b] / base["test_loss"]
            out["ahp"][si, :, b] = ahp_affinity(torch.stack([t["losses"] for t in tuned]))
    config = {
        "tasks": [t.config() for t in tasks],
        "seeds": list(seeds),
        "arch": arch,
        "source_epochs": source_epochs,
        "budget": budget,
        "batch_size": batch_size,
        "lr": lr,
        "loss": loss_name(loss),
        "fisher_samples": fisher_samples,
        "device": str(device),
    }
    return AffinityResult(
        names, list(seeds), out["ftd"], out["loss"], scratch_loss, source_loss, out["gain"], out["ahp"], seconds, config
    )
