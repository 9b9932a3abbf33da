"""FUSE, the fusion search of the TA-NAS papers (docs/nas.md), with checkpoints inside rounds and bit-exact resume.

One round trains a set of candidate networks C jointly through their convex combination

    c̄(X) = Σ_{c∈C} softmax(α)_c · c(X),        α initialised to 1/|C| (so softmax(α) starts uniform),

where c(X) are the candidates' logits, by alternating

    weight phase:  min_w  L_train(w; α, c̄)   (cross-entropy of c̄ on training batches, α held fixed)
    α phase:       min_α  L_val(α; w, c̄)     (cross-entropy of c̄ on the held-out *validation* split, w fixed)

until α converges (max_c |Δα_c| over one alternation below ``alpha_tol``) or ``alternations`` run out. The round's
winner is argmax_c α_c. Every round samples ``candidates`` new architectures from the space, distinct from each
other and from the current best, which joins them; the winner of the last round is retrained from scratch and
evaluated on the test split, which the search itself never sees.

Choices and why:
- The α phase runs the candidates in eval mode and computes their validation logits once per phase (the weights
  are fixed, so the logits are too); the α steps then only re-weight cached logits. This is exact, cheap, and keeps
  BatchNorm statistics from drifting on validation data.
- Candidates are re-initialised every round, the incumbent included: with its weights carried over the incumbent
  would win by having been trained longer, not by being a better architecture.
- All randomness comes from one ``torch.Generator`` seeded by ``seed``: it draws the candidates and a per-round seed
  that fixes initialisation (under ``torch.random.fork_rng``, so the global RNG is left alone) and batch order; the
  global generators are seeded from ``seed`` too for the search (:mod:`fisherx.nas.determinism`).
- Checkpoints, after every round and every ``checkpoint_every`` weight steps, hold the whole training state: the
  candidates' weights, α, both Adam states, the batch position and every random state, so a search killed at any
  step and rerun with the same call continues where the checkpoint left it and ends bit-identical to an
  uninterrupted run (same machine and thread count; a resume elsewhere warns).
- The authors' script tuned α on the test set and seeded its two new candidates identically; neither is copied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._progress import Progress
from ..io import save_tree
from ..models.training import seeded
from ._common import (
    SearchFiles,
    accuracy,
    batches,
    check_positive_ints,
    data_fingerprint,
    device_name,
    final_training,
    logits_of,
    search_inputs,
    show_progress,
)
from .cost import CostMeter
from .determinism import check_environment, environment, reproducible, rng_state, set_rng_state
from .genotype import Genotype
from .space import SearchSpace


class FuseRound:
    """The state of one FUSE round: the candidate networks, α, and the two optimisers.

    ``weight_step`` changes only the candidates' weights; ``alpha_phase`` changes only α. Both are the exact code
    the search runs, so tests can check each in isolation.
    """

    def __init__(self, nets: Sequence[nn.Module], *, lr: float, alpha_lr: float, weight_decay: float = 0.0):
        self.nets = nn.ModuleList(nets)
        n = len(self.nets)
        if n < 1:
            raise ValueError("FUSE needs at least one candidate")
        device = next(self.nets.parameters()).device
        self.alpha = torch.full((n,), 1.0 / n, device=device, requires_grad=True)
        self.w_opt = torch.optim.Adam(self.nets.parameters(), lr=lr, weight_decay=weight_decay)
        self.a_opt = torch.optim.Adam([self.alpha], lr=alpha_lr)

    def mixed(self, logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """c̄ = Σ_c softmax(α)_c · logits_c for logits of shape (|C|, B, K)."""
        return torch.einsum("c,cbk->bk", torch.softmax(alpha, 0), logits)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One descent step on the candidates' weights for L_train(w; α, c̄) with α fixed (detached)."""
        self.nets.train()
        logits = torch.stack([net(x) for net in self.nets])
        loss = F.cross_entropy(self.mixed(logits, self.alpha.detach()), y)
        self.w_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.w_opt.step()
        return loss.item()

    def val_logits(self, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
        """(|C|, N, K) eval-mode logits of the validation inputs; no gradient reaches the weights."""
        return torch.stack([logits_of(net, x, batch_size, device) for net in self.nets])

    def alpha_step(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        """One descent step on α for L_val(α; w, c̄), the weights fixed (``logits`` carry no graph to them)."""
        loss = F.cross_entropy(self.mixed(logits.detach(), self.alpha), y)
        self.a_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.a_opt.step()
        return loss.item()

    def alpha_phase(
        self, x_val, y_val, *, epochs: int, batch_size: int, gen: torch.Generator, device: torch.device
    ) -> dict:
        logits = self.val_logits(x_val, batch_size, device)
        y_val = y_val.to(device)
        losses = []
        for _ in range(epochs):
            for idx in batches(len(y_val), batch_size, gen):
                idx = idx.to(device)
                losses.append(self.alpha_step(logits[:, idx], y_val[idx]))
        with torch.no_grad():
            mixed_loss = float(F.cross_entropy(self.mixed(logits, self.alpha), y_val))
            mixed_acc = accuracy(self.mixed(logits, self.alpha), y_val)
        return {
            "alpha_steps": len(losses),
            "val_loss": mixed_loss,
            "val_accuracy": mixed_acc,
            "candidate_val_accuracy": [accuracy(out, y_val) for out in logits],
        }


@dataclass
class FuseResult:
    """What a search returns: the winning genotype, its accuracy after final training, its parameter count, the
    search cost, and the per-round history (α, losses, accuracies)."""

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
    def from_dict(cls, d: dict) -> FuseResult:
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


def _distinct_candidates(space: SearchSpace, gen: torch.Generator, count: int, exclude: set) -> list[Genotype]:
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


def _new_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen))


def train_epochs(
    rnd: FuseRound,
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
    """Weight steps over ``epochs`` shuffled passes of (x, y), from the position ``pos`` and keeping it current:
    ``epoch`` and ``batch`` (the next step), ``epoch_gen`` (the state of ``gen`` when the epoch's order was drawn,
    None before it is) and ``losses`` (every step's loss so far). ``on_step()`` runs after every step, so a caller can
    checkpoint ``pos``; resuming from a saved ``pos`` (with ``gen`` restored to its saved state) redraws the same
    order and continues with the same batch. Returns ``pos["losses"]``."""
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


class Checkpointer:
    """Mid-round checkpoints every ``every`` weight steps (None or 0: only at round ends). ``step(inflight)`` counts a
    weight step and, every ``every`` steps, writes ``base()`` (the state as of the last finished round) plus
    ``inflight()`` (the round in progress), so a kill at any step loses at most ``every`` steps, which the rerun
    repeats bit for bit."""

    def __init__(self, files: SearchFiles, every: int | None):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
            raise ValueError(f"checkpoint_every must be a non-negative integer or None, got {every!r}")
        self.files, self.every, self.steps = files, every or 0, 0
        self.base: Callable[[], dict] = dict  # set by the search before each round

    def step(self, inflight) -> None:
        self.steps += 1
        if self.every and self.files.dir is not None and self.steps % self.every == 0:
            self.files.save_state({**self.base(), "inflight": inflight()})


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


def round_state(rnd: FuseRound, data_gen: torch.Generator, extra: dict) -> dict:
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


def load_round_state(rnd: FuseRound, data_gen: torch.Generator, state: dict) -> None:
    """Put a round back where :func:`round_state` saw it."""
    rnd.nets.load_state_dict(state["nets"])
    with torch.no_grad():
        rnd.alpha.copy_(state["alpha"])
    rnd.w_opt.load_state_dict(state["w_opt"])
    rnd.a_opt.load_state_dict(state["a_opt"])
    data_gen.set_state(state["data_gen"])


def fuse(
    space: SearchSpace,
    task: Any,
    *,
    candidates: int = 3,
    rounds: int = 10,
    alternations: int = 10,
    weight_epochs: int = 1,
    alpha_epochs: int = 10,
    alpha_tol: float = 1e-3,
    batch_size: int = 64,
    lr: float = 3e-3,
    alpha_lr: float = 0.05,
    weight_decay: float = 0.0,
    final_epochs: int = 20,
    seed: int = 0,
    init: Genotype | None = None,
    device=None,
    out_dir=None,
    progress: bool | None = None,
    data_dir=None,
    checkpoint_every: int | None = 50,
    deterministic: bool = True,
) -> FuseResult:
    """Search ``space`` for ``task`` (a Task or its loaded TaskData) with FUSE; see the module docstring.

    Budget knobs: ``candidates`` (C new architectures per round; the round trains C + 1 networks at once, so C and
    ``batch_size`` bound the memory), ``rounds``, ``alternations`` (max weight/α alternations per round),
    ``weight_epochs`` / ``alpha_epochs`` (passes over train / validation data per alternation; α steps only
    re-weight cached logits, so the authors' 10 α epochs cost next to nothing, and with fewer α barely leaves
    1/|C| on a small validation split). ``init`` is an
    optional starting best (else round 0 has C candidates). ``out_dir`` holds the checkpoint, the JSON-lines log
    and the result; rerunning the same call there resumes (or returns the finished result).

    Reproducibility: ``seed`` alone fixes the run (:func:`fisherx.nas.determinism.reproducible`; with
    ``deterministic`` PyTorch's deterministic kernels are required, with a warning for any operation that has none
    on the device). The checkpoint is written after every round and every ``checkpoint_every`` weight steps; it
    holds the candidates' weights, α, both optimisers' states, every random state and the batch position, so a
    search killed at any point resumes and ends bit-identical to an uninterrupted run on the same machine and thread
    count. (FUSE uses constant learning rates: there is no scheduler state to keep.)

    Returns a :class:`FuseResult`; ``cost`` has ``search_s`` (wall time of the rounds, summed over resumes),
    ``final_train_s``, ``stages`` (wall time, device time and peak memory of ``search`` and ``final_training``, see
    :mod:`fisherx.nas.cost`), ``device``, ``rounds``, ``candidate_epochs`` (Σ networks × weight epochs, the budget
    unit random search is matched on), ``candidates_trained``, ``weight_steps``, ``alpha_steps`` and
    ``nondeterministic_ops``.
    """
    check_positive_ints(
        candidates=candidates,
        rounds=rounds,
        alternations=alternations,
        weight_epochs=weight_epochs,
        alpha_epochs=alpha_epochs,
        batch_size=batch_size,
        final_epochs=final_epochs,
    )
    if init is not None:
        space.check(init)
    data, device, (x_tr, y_tr), (x_val, y_val), (in_channels, num_classes) = search_inputs(task, data_dir, device)
    config = {
        "method": "fuse",
        "space": space.to_dict(),
        "data": data_fingerprint(data),
        "candidates": candidates,
        "rounds": rounds,
        "alternations": alternations,
        "weight_epochs": weight_epochs,
        "alpha_epochs": alpha_epochs,
        "alpha_tol": alpha_tol,
        "batch_size": batch_size,
        "lr": lr,
        "alpha_lr": alpha_lr,
        "weight_decay": weight_decay,
        "final_epochs": final_epochs,
        "seed": seed,
        "init": init.to_dict() if init is not None else None,
        "deterministic": deterministic,
    }
    files = SearchFiles(out_dir, "fuse", config)
    done = files.load_result()
    if done is not None:
        return FuseResult.from_dict(done)
    ckpt = Checkpointer(files, checkpoint_every)

    gen = torch.Generator().manual_seed(seed)
    best, history, start, inflight, nondet = init, [], 0, None, []
    state = files.load_checkpoint()
    meter = CostMeter(device, state["cost"] if state is not None else None)

    with reproducible(seed, device, deterministic=deterministic, found=nondet):
        if state is not None:
            history, start, inflight = resume_run(state, device, gen, nondet, f"FUSE in {files.dir}")
            best = Genotype.from_dict(state["best"]) if state["best"] is not None else None
        with Progress(total=rounds, initial=start, desc="FUSE", unit="round", enabled=show_progress(progress)) as bar:
            x_tr, y_tr = x_tr.to(device), y_tr.to(device)
            with meter.stage("search"):
                for r in range(start, rounds):
                    if inflight is not None:  # resume inside round r: the candidates were drawn before the checkpoint
                        cands = [Genotype.from_dict(g) for g in inflight["candidates"]]
                        round_seed, incumbent = inflight["round_seed"], inflight["incumbent"]
                    else:
                        exclude = {best.key()} if best is not None else set()
                        new = _distinct_candidates(space, gen, candidates, exclude)
                        incumbent = best is not None
                        cands = ([best] if incumbent else []) + new
                        round_seed = _new_seed(gen)
                    with seeded(round_seed, device):
                        nets = [space.build(g, in_channels, num_classes).to(device) for g in cands]
                    rnd = FuseRound(nets, lr=lr, alpha_lr=alpha_lr, weight_decay=weight_decay)
                    data_gen = torch.Generator().manual_seed(round_seed)
                    if inflight is not None:
                        load_round_state(rnd, data_gen, inflight)
                        # Checkpoints hold CPU tensors: α's reference point goes back to α's device.
                        a0, pos, before = inflight["alternation"], inflight["position"], inflight["before"].to(device)
                        alts, steps = list(inflight["alternations"]), dict(inflight["steps"])
                    else:
                        a0, pos, before, alts = 0, new_position(), rnd.alpha.detach().clone(), []
                        steps = {"weight_steps": 0, "alpha_steps": 0}
                    inflight = None
                    ckpt.base = lambda: {
                        "round": r - 1,
                        "generator": gen.get_state(),
                        "best": best.to_dict() if best is not None else None,
                        "history": history,
                        **run_state(device, meter, nondet),
                    }
                    for a in range(a0, alternations):
                        here = lambda: round_state(
                            rnd,
                            data_gen,
                            {  # noqa: E731 (read at checkpoint time)
                                "candidates": [g.to_dict() for g in cands],
                                "round_seed": round_seed,
                                "incumbent": incumbent,
                                "alternation": a,
                                "position": pos,
                                "before": before,
                                "alternations": alts,
                                "steps": steps,
                            },
                        )
                        losses = train_epochs(
                            rnd,
                            x_tr,
                            y_tr,
                            epochs=weight_epochs,
                            batch_size=batch_size,
                            gen=data_gen,
                            device=device,
                            pos=pos,
                            on_step=lambda: ckpt.step(here),
                        )
                        steps["weight_steps"] += len(losses)
                        info = rnd.alpha_phase(
                            x_val, y_val, epochs=alpha_epochs, batch_size=batch_size, gen=data_gen, device=device
                        )
                        steps["alpha_steps"] += info.pop("alpha_steps")
                        change = float((rnd.alpha.detach() - before).abs().max())
                        alts.append(
                            {
                                "train_loss": sum(losses) / len(losses),
                                **info,
                                "alpha": rnd.alpha.tolist(),
                                "alpha_change": change,
                            }
                        )
                        pos, before = new_position(), rnd.alpha.detach().clone()
                        if change < alpha_tol:
                            break
                    alpha = rnd.alpha.detach().cpu()
                    winner = int(torch.argmax(alpha))  # ties go to the lower index: the incumbent, listed first
                    best = cands[winner]
                    history.append(
                        {
                            "round": r,
                            "candidates": [g.to_dict() for g in cands],
                            "incumbent": 0 if incumbent else None,
                            "alpha": alpha.tolist(),
                            "weights": torch.softmax(alpha, 0).tolist(),
                            "winner": winner,
                            "alternations": alts,
                            "candidate_epochs": len(cands) * weight_epochs * len(alts),
                            **steps,
                            "elapsed_s": meter.snapshot()["search"]["wall_s"],
                        }
                    )
                    files.save_round(
                        {
                            "round": r,
                            "generator": gen.get_state(),
                            "best": best.to_dict(),
                            "history": history,
                            **run_state(device, meter, nondet),
                        },
                        history,
                    )
                    bar.update(1)
                    bar.set_description(
                        f"round {r + 1}: {len(cands)} candidates, winner's validation accuracy "
                        f"{alts[-1]['candidate_val_accuracy'][winner]:.3f}"
                    )
        if best is None:  # rounds ≥ 1 is enforced, so this cannot happen unless the space yields nothing
            raise RuntimeError("FUSE found no candidate; the search space produced no architectures")
        with meter.stage("final_training"):
            final, net = _final(files, space, best, data, final_epochs, batch_size, lr, seed, device)
    cost = search_cost(
        meter,
        device,
        history,
        nondet,
        alpha_steps=sum(h["alpha_steps"] for h in history),
        candidates_trained=sum(len(h["candidates"]) for h in history),
    )
    result = FuseResult(
        best, final["test_accuracy"], final["val_accuracy"], final["params"], cost, history, space, "fuse", net
    )
    _save_winner(files, net, result)
    return result


def search_cost(
    meter: CostMeter,
    device: torch.device,
    history: list[dict],
    nondet: list,
    *,
    alpha_steps: int,
    candidates_trained: int,
) -> dict:
    """The ``cost`` of a search result (see :func:`fuse`)."""
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


def _save_winner(files: SearchFiles, net: nn.Module, result) -> None:
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
