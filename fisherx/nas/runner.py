"""The scaffold every search strategy shares, so that a strategy (:func:`fisherx.nas.fuse`,
:func:`fisherx.nas.random_search`) is only its loop: what it samples, trains and records each round.

:class:`SearchRun` owns one resumable search in ``out_dir``: its files (checkpoint, JSON-lines log, result), the
search generator that ``seed`` fixes, the cost meter, the reproducibility settings, the resume from a checkpoint
(bit-exact, inside a round too), the mid-round checkpoints every ``checkpoint_every`` weight steps, the winner's
final training and saving it. Every strategy returns a :class:`SearchResult`.

The pieces a strategy's loop uses: :func:`distinct_candidates` and :func:`new_seed` (all randomness from the
search generator), :func:`train_epochs` with :func:`new_position` (weight steps from a resumable position;
:meth:`SearchRun.weight_steps` checkpoints them), :func:`round_state` / :func:`load_round_state` (the in-flight
state of a round).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..io import save_tree
from ._common import SearchFiles, batches, data_fingerprint, device_name, final_training
from .cost import CostMeter
from .determinism import check_environment, environment, reproducible, rng_state, set_rng_state
from .genotype import Genotype
from .space import SearchSpace


@dataclass
class SearchResult:
    """What every search strategy returns (``method``: "fuse", "random"): the winning genotype, its accuracy after
    final training, its parameter count, the search cost, and the per-round history (the strategy's records: α,
    losses, accuracies)."""

    genotype: Genotype
    test_accuracy: float
    val_accuracy: float
    params: int
    cost: dict
    history: list[dict] = field(repr=False)
    space: SearchSpace = field(repr=False)
    method: str = "fuse"
    model: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "genotype": self.genotype.to_dict(),
            "test_accuracy": self.test_accuracy,
            "val_accuracy": self.val_accuracy,
            "params": self.params,
            "cost": self.cost,
            "history": self.history,
            "space": self.space.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SearchResult:
        return cls(
            Genotype.from_dict(d["genotype"]),
            d["test_accuracy"],
            d["val_accuracy"],
            d["params"],
            d["cost"],
            d["history"],
            SearchSpace.from_dict(d["space"]),
            d.get("method", "fuse"),
        )

    def summary(self) -> str:
        c = self.cost
        st = c.get("stages", {})
        dev = lambda k: f" (device {st[k]['device_s']:.1f} s)" if k in st else ""  # noqa: E731
        peak = (f", peak memory {c['peak_rss_mb']:,.0f} MB RSS" if c.get("peak_rss_mb") is not None else "") + (
            f", {c['peak_cuda_mb']:,.0f} MB CUDA" if c.get("peak_cuda_mb") is not None else ""
        )
        return (
            f"{self.method}: test accuracy {self.test_accuracy:.4f}, {self.params:,} parameters, search "
            f"{c['search_s']:.1f} s{dev('search')} + final training {c['final_train_s']:.1f} s"
            f"{dev('final_training')} on {c['device']}, {c.get('candidates_trained', '?')} candidates trained "
            f"({c['candidate_epochs']} candidate-epochs){peak}\n{self.genotype}"
        )


class SearchRun:
    """One resumable search of kind ``kind`` ("fuse", "random") with configuration ``config`` in ``out_dir``.

    After construction, ``done`` is the stored result's dict when this exact search already finished there (the
    strategy returns it), else None. Inside :meth:`resumed`, ``history``, ``start`` (the first round to run) and
    ``inflight`` (the state of a round interrupted mid-way, or None) are restored from the checkpoint when there is
    one (``state``); :meth:`round_base`, :meth:`step` and :meth:`save_round` write checkpoints; :meth:`finish` trains
    the winner from scratch and stores the result."""

    def __init__(
        self,
        kind: str,
        config: dict,
        out_dir,
        device: torch.device,
        *,
        seed: int,
        deterministic: bool,
        checkpoint_every: int | None,
    ):
        self.kind, self.device, self.seed, self.deterministic = kind, device, seed, deterministic
        self.files = SearchFiles(out_dir, kind, config)
        self.done = self.files.load_result()
        if checkpoint_every is not None and (
            isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0
        ):
            raise ValueError(f"checkpoint_every must be a non-negative integer or None, got {checkpoint_every!r}")
        self.every, self.steps = checkpoint_every or 0, 0
        self.gen = torch.Generator().manual_seed(seed)
        self.history: list[dict] = []
        self.start, self.inflight, self.nondet = 0, None, []
        self.state = self.files.load_checkpoint() if self.done is None else None
        self.meter = CostMeter(device, self.state["cost"] if self.state is not None else None)
        self._base: dict = {}
        self._winner: tuple | None = None  # (space, genotype, final-training report, network)

    @classmethod
    def of(
        cls, kind: str, space: SearchSpace, data, settings: dict, out_dir, device, *, checkpoint_every: int | None
    ) -> SearchRun:
        """The run of strategy ``kind`` searching ``space`` on ``data``, configured by the strategy's ``settings``
        (every argument that changes its result, ``seed`` and ``deterministic`` among them) plus what every
        strategy's configuration holds: the method, the space and the data's fingerprint. A resume must match it."""
        config = {"method": kind, "space": space.to_dict(), "data": data_fingerprint(data), **settings}
        seed, deterministic = settings["seed"], settings["deterministic"]
        return cls(
            kind, config, out_dir, device, seed=seed, deterministic=deterministic, checkpoint_every=checkpoint_every
        )

    @contextlib.contextmanager
    def resumed(self, what: str) -> Iterator[SearchRun]:
        """The search's block: under :func:`fisherx.nas.determinism.reproducible` (``seed``; deterministic kernels
        when asked), with the checkpoint, if any, restored first (``what`` names the search in a warning about a
        changed environment)."""
        with reproducible(self.seed, self.device, deterministic=self.deterministic, found=self.nondet):
            if self.state is not None:
                self.history, self.start, self.inflight = resume_run(
                    self.state, self.device, self.gen, self.nondet, what
                )
            yield self

    def round_base(self, last_round: int, **extra: Any) -> None:
        """Before a round: what its mid-round checkpoints hold besides the round's own state (the last finished
        round, the strategy's ``extra`` such as FUSE's incumbent; the generator and run state as of writing)."""
        self._base = {"round": last_round, "history": self.history, **extra}

    def step(self, rnd, data_gen: torch.Generator, extra: dict) -> None:
        """Count one weight step; every ``checkpoint_every`` steps write the round in flight
        (:func:`round_state` of ``rnd``, ``data_gen`` and the strategy's ``extra``), so a kill at any step loses at
        most that many steps, which the rerun repeats bit for bit."""
        self.steps += 1
        if self.every and self.files.dir is not None and self.steps % self.every == 0:
            state = {**self._base, "generator": self.gen.get_state(), **run_state(self.device, self.meter, self.nondet)}
            self.files.save_state({**state, "inflight": round_state(rnd, data_gen, extra)})

    def weight_steps(
        self,
        rnd,
        x: torch.Tensor,
        y: torch.Tensor,
        data_gen: torch.Generator,
        pos: dict,
        extra: dict,
        *,
        epochs: int,
        batch_size: int,
    ) -> list[float]:
        """:func:`train_epochs` of ``rnd`` on (x, y) from ``pos`` with every step counted by :meth:`step`, so the
        mid-round checkpoints hold ``rnd``, ``data_gen`` and ``extra``."""
        on_step = functools.partial(self.step, rnd, data_gen, extra)
        return train_epochs(
            rnd, x, y, epochs=epochs, batch_size=batch_size, gen=data_gen, device=self.device, pos=pos, on_step=on_step
        )

    def save_round(self, r: int, **extra: Any) -> None:
        """The checkpoint at the end of round ``r`` (plus the strategy's ``extra``), then the log of every round."""
        state = {"round": r, "generator": self.gen.get_state(), **extra, "history": self.history}
        self.files.save_round({**state, **run_state(self.device, self.meter, self.nondet)}, self.history)

    def train_winner(
        self, space: SearchSpace, best: Genotype, data, *, final_epochs: int, batch_size: int, lr: float
    ) -> None:
        """Inside :meth:`resumed`: train ``best`` from scratch (:func:`fisherx.nas._common.final_training`,
        checkpointed per epoch, so a kill there loses at most one epoch)."""
        with self.meter.stage("final_training"):
            final, net = _final(self.files, space, best, data, final_epochs, batch_size, lr, self.seed, self.device)
        self._winner = (space, best, final, net)

    def finish(self, *, method: str, alpha_steps: int, candidates_trained: int) -> SearchResult:
        """After :meth:`resumed` has closed (so every nondeterministic operation met is counted): store the
        winner's weights, genotype and result beside the search's files, and return the result."""
        if self._winner is None:
            raise RuntimeError("SearchRun.finish() before train_winner(): there is no winner to store")
        space, best, final, net = self._winner
        cost = search_cost(
            self.meter,
            self.device,
            self.history,
            self.nondet,
            alpha_steps=alpha_steps,
            candidates_trained=candidates_trained,
        )
        result = SearchResult(
            best, final["test_accuracy"], final["val_accuracy"], final["params"], cost, self.history, space, method, net
        )
        _save_winner(self.files, net, result)
        return result


def distinct_candidates(space: SearchSpace, gen: torch.Generator, count: int, exclude: set) -> list[Genotype]:
    """``count`` genotypes distinct from each other and from ``exclude`` (keys), drawn from ``gen``. A space too small
    to provide them yields fewer (never duplicates)."""
    out, seen = [], set(exclude)
    for _ in range(max(50, 50 * count)):
        if len(out) == count:
            break
        g = space.sample(gen)
        if g.key() not in seen:
            seen.add(g.key())
            out.append(g)
    return out


def new_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen))


def train_epochs(
    rnd,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    gen: torch.Generator,
    device: torch.device,
    pos: dict,
    on_step=None,
) -> list[float]:
    """Weight steps of ``rnd`` (anything with ``weight_step(x, y) -> loss``, e.g. a FUSE round) over ``epochs``
    shuffled passes of (x, y), from the position ``pos`` and keeping it current: ``epoch`` and ``batch`` (the next
    step), ``epoch_gen`` (the state of ``gen`` when the epoch's order was drawn, None before it is) and ``losses``
    (every step's loss so far). ``on_step()`` runs after every step, so a caller can checkpoint ``pos``; resuming
    from a saved ``pos`` (with ``gen`` restored to its saved state) redraws the same order and continues with the
    same batch. Returns ``pos["losses"]``."""
    for e in range(pos["epoch"], epochs):
        if pos["epoch_gen"] is None:
            pos["epoch_gen"] = gen.get_state()
        else:
            gen.set_state(pos["epoch_gen"])
        order = batches(len(y), batch_size, gen)
        for i in range(pos["batch"], len(order)):
            idx = order[i].to(device)
            pos["losses"].append(rnd.weight_step(x[idx], y[idx]))
            pos["batch"] = i + 1
            if on_step is not None:
                on_step()
        pos.update(epoch=e + 1, batch=0, epoch_gen=None)
    return pos["losses"]


def new_position() -> dict:
    """The position of :func:`train_epochs` before its first step."""
    return {"epoch": 0, "batch": 0, "epoch_gen": None, "losses": []}


def run_state(device: torch.device, meter: CostMeter, nondet: list) -> dict:
    """The part of every search checkpoint that is not the search's own: the global random states, the environment
    (:func:`fisherx.nas.determinism.environment`), the cost so far and the nondeterministic operations met."""
    return {
        "rng": rng_state(device),
        "environment": environment(device),
        "cost": meter.snapshot(),
        "nondeterministic_ops": list(nondet),
    }


def resume_run(state: dict, device: torch.device, gen: torch.Generator, nondet: list, what: str):
    """Undo :func:`run_state` from a checkpoint (inside :func:`reproducible`): restore the search generator and the
    global random states, warn if the environment changed; returns (history, first round to run, in-flight round)."""
    check_environment(state.get("environment"), device, what)
    gen.set_state(state["generator"])
    set_rng_state(state["rng"], device)
    nondet.extend(state.get("nondeterministic_ops", []))
    return list(state["history"]), int(state["round"]) + 1, state.get("inflight")


def round_state(rnd, data_gen: torch.Generator, extra: dict) -> dict:
    """The in-flight state of a round (the tree a mid-round checkpoint stores): the candidates' weights and
    BatchNorm buffers, α, both Adam states, the batch-order generator, and the caller's position/bookkeeping."""
    return {
        "nets": rnd.nets.state_dict(),
        "alpha": rnd.alpha.detach().clone(),
        "w_opt": rnd.w_opt.state_dict(),
        "a_opt": rnd.a_opt.state_dict(),
        "data_gen": data_gen.get_state(),
        **extra,
    }


def load_round_state(rnd, data_gen: torch.Generator, state: dict) -> None:
    """Put a round back where :func:`round_state` saw it."""
    rnd.nets.load_state_dict(state["nets"])
    with torch.no_grad():
        rnd.alpha.copy_(state["alpha"])
    rnd.w_opt.load_state_dict(state["w_opt"])
    rnd.a_opt.load_state_dict(state["a_opt"])
    data_gen.set_state(state["data_gen"])


def search_cost(
    meter: CostMeter,
    device: torch.device,
    history: list[dict],
    nondet: list,
    *,
    alpha_steps: int,
    candidates_trained: int,
) -> dict:
    """The ``cost`` of a search result (see :func:`fisherx.nas.fuse`)."""
    stages = meter.to_dict()["stages"]
    return {
        "search_s": stages["search"]["wall_s"],
        "final_train_s": stages["final_training"]["wall_s"],
        "stages": stages,
        "device": device_name(device),
        "rounds": len(history),
        "candidate_epochs": sum(h["candidate_epochs"] for h in history),
        "weight_steps": sum(h["weight_steps"] for h in history),
        "alpha_steps": alpha_steps,
        "candidates_trained": candidates_trained,
        "nondeterministic_ops": list(nondet),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "peak_cuda_mb": max(
            (s["peak_cuda_mb"] for s in stages.values() if s["peak_cuda_mb"] is not None), default=None
        ),
    }


def _final(files: SearchFiles, space, best, data, final_epochs, batch_size, lr, seed, device):
    # The final seed is derived from the search seed, distinct from every round seed stream. The final training
    # checkpoints every epoch next to the search's checkpoint, so a kill there loses at most one epoch.
    ck = files.dir / f"{files.kind}_final_checkpoint.fx" if files.dir is not None else None
    return final_training(
        space,
        best,
        data,
        epochs=final_epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed * 1_000_003 + 7,
        device=device,
        checkpoint=ck,
    )


def _save_winner(files: SearchFiles, net: nn.Module, result: SearchResult) -> None:
    if files.dir is None:
        return
    save_tree(
        files.dir / f"{files.kind}_winner.fx",
        {k: v.detach().cpu() for k, v in net.state_dict().items()},
        meta={"genotype": result.genotype.to_dict(), "space": result.space.to_dict()},
    )
    result.genotype.save(files.dir / f"{files.kind}_genotype.json", space=result.space)  # rebuildable alone
    files.save_result(result.to_dict())
    # The result is stored: the final training's own checkpoint is no longer needed.
    (files.dir / f"{files.kind}_final_checkpoint.fx").unlink(missing_ok=True)
