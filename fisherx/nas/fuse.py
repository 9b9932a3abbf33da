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

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._progress import Progress
from ..models.training import seeded
from ._common import (
    accuracy,
    batches,
    check_positive_ints,
    logits_of,
    search_inputs,
    show_progress,
)
from .genotype import Genotype
from .runner import (
    SearchResult,
    SearchRun,
    distinct_candidates,
    load_round_state,
    new_position,
    new_seed,
)
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
) -> SearchResult:
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

    Returns a :class:`~fisherx.nas.runner.SearchResult` (``method == "fuse"``); ``cost`` has ``search_s`` (wall
    time of the rounds, summed over resumes), ``final_train_s``, ``stages`` (wall time, device time and peak memory
    of ``search`` and ``final_training``, see :mod:`fisherx.nas.cost`), ``device``, ``rounds``,
    ``candidate_epochs`` (Σ networks × weight epochs, the budget unit random search is matched on),
    ``candidates_trained``, ``weight_steps``, ``alpha_steps`` and ``nondeterministic_ops``.
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
    settings = {
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
    run = SearchRun.of("fuse", space, data, settings, out_dir, device, checkpoint_every=checkpoint_every)
    if run.done is not None:
        return SearchResult.from_dict(run.done)
    best = init
    with run.resumed(f"FUSE in {run.files.dir}"):
        if run.state is not None:
            best = Genotype.from_dict(run.state["best"]) if run.state["best"] is not None else None
        inflight = run.inflight
        bar = Progress(total=rounds, initial=run.start, desc="FUSE", unit="round", enabled=show_progress(progress))
        with bar, run.meter.stage("search"):
            x_tr, y_tr = x_tr.to(device), y_tr.to(device)
            for r in range(run.start, rounds):
                if inflight is not None:  # resume inside round r: the candidates were drawn before the checkpoint
                    cands = [Genotype.from_dict(g) for g in inflight["candidates"]]
                    round_seed, incumbent = inflight["round_seed"], inflight["incumbent"]
                else:
                    exclude = {best.key()} if best is not None else set()
                    new = distinct_candidates(space, run.gen, candidates, exclude)
                    incumbent = best is not None
                    cands = ([best] if incumbent else []) + new
                    round_seed = new_seed(run.gen)
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
                run.round_base(r - 1, best=best.to_dict() if best is not None else None)
                for a in range(a0, alternations):
                    # What a mid-round checkpoint stores of this alternation (pos, alts and steps change in place).
                    extra = {
                        "candidates": [g.to_dict() for g in cands],
                        "round_seed": round_seed,
                        "incumbent": incumbent,
                        "alternation": a,
                        "position": pos,
                        "before": before,
                        "alternations": alts,
                        "steps": steps,
                    }
                    losses = run.weight_steps(
                        rnd, x_tr, y_tr, data_gen, pos, extra, epochs=weight_epochs, batch_size=batch_size
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
                run.history.append(
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
                        "elapsed_s": run.meter.snapshot()["search"]["wall_s"],
                    }
                )
                run.save_round(r, best=best.to_dict())
                bar.update(1)
                bar.set_description(
                    f"round {r + 1}: {len(cands)} candidates, winner's validation accuracy "
                    f"{alts[-1]['candidate_val_accuracy'][winner]:.3f}"
                )
        if best is None:  # rounds ≥ 1 is enforced, so this cannot happen unless the space yields nothing
            raise RuntimeError("FUSE found no candidate; the search space produced no architectures")
        run.train_winner(space, best, data, final_epochs=final_epochs, batch_size=batch_size, lr=lr)
    return run.finish(
        method="fuse",
        alpha_steps=sum(h["alpha_steps"] for h in run.history),
        candidates_trained=sum(len(h["candidates"]) for h in run.history),
    )


# The result type before the search scaffold moved to fisherx.nas.runner; kept so existing code keeps working.
FuseResult = SearchResult
