"""Random search, the baseline TA-NAS must beat (Li & Talwalkar 2019; the papers' tables).

Draw distinct architectures from the same space, train each on its own for ``epochs_per_candidate`` epochs (Adam,
same learning rate and batch size as FUSE's weight steps), keep the one with the best *validation* accuracy, and
retrain it from scratch exactly as FUSE retrains its winner. The budget is counted in the unit FUSE reports,
candidate-epochs (networks × passes over the training data): with ``budget = fuse_result.cost["candidate_epochs"]``
both methods spend the same number of training passes, random search on fewer but fully trained networks.

Resumable like FUSE: a checkpoint after every candidate and every few weight steps, the same JSON-lines log.
"""

from __future__ import annotations

from typing import Any

import torch

from .._progress import Progress
from ..models.training import seeded
from . import runner
from ._common import (
    accuracy,
    check_positive_ints,
    logits_of,
    search_inputs,
    show_progress,
)
from .fuse import FuseRound
from .genotype import Genotype
from .space import SearchSpace


def random_search(
    space: SearchSpace,
    task: Any,
    *,
    budget: int,
    epochs_per_candidate: int = 5,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    final_epochs: int = 20,
    seed: int = 0,
    device=None,
    out_dir=None,
    progress: bool | None = None,
    data_dir=None,
    checkpoint_every: int | None = 50,
    deterministic: bool = True,
) -> runner.SearchResult:
    """Random search with ``budget`` candidate-epochs: ⌊budget / epochs_per_candidate⌋ distinct architectures.

    Seeding, determinism, checkpoints (every candidate and every ``checkpoint_every`` weight steps) and ``cost`` are
    as in :func:`fisherx.nas.fuse`. Returns a :class:`~fisherx.nas.runner.SearchResult` with ``method ==
    "random"``; ``history`` has one entry per candidate (its genotype, validation accuracy, final training loss).
    """
    check_positive_ints(
        budget=budget, epochs_per_candidate=epochs_per_candidate, batch_size=batch_size, final_epochs=final_epochs
    )
    n = budget // epochs_per_candidate
    if n < 1:
        raise ValueError(
            f"a budget of {budget} candidate-epochs trains no candidate at {epochs_per_candidate} "
            f"epochs each; raise the budget or lower epochs_per_candidate"
        )
    data, device, (x_tr, y_tr), (x_val, y_val), (in_channels, num_classes) = search_inputs(task, data_dir, device)
    settings = {
        "budget": budget,
        "epochs_per_candidate": epochs_per_candidate,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "final_epochs": final_epochs,
        "seed": seed,
        "deterministic": deterministic,
    }
    run = runner.SearchRun.of("random", space, data, settings, out_dir, device, checkpoint_every=checkpoint_every)
    if run.done is not None:
        return runner.SearchResult.from_dict(run.done)
    with run.resumed(f"random search in {run.files.dir}"):
        inflight = run.inflight
        seen = {Genotype.from_dict(h["genotype"]).key() for h in run.history}
        bar = Progress(total=n, initial=run.start, desc="random search", unit="arch", enabled=show_progress(progress))
        with bar, run.meter.stage("search"):
            x_tr, y_tr = x_tr.to(device), y_tr.to(device)
            for i in range(run.start, n):
                if inflight is not None:  # resume inside candidate i
                    g, cand_seed = Genotype.from_dict(inflight["genotype"]), inflight["seed"]
                else:
                    found = runner.distinct_candidates(space, run.gen, 1, seen)
                    if not found:
                        break  # the space is exhausted: every architecture has been tried
                    g = found[0]
                    cand_seed = runner.new_seed(run.gen)
                seen.add(g.key())
                with seeded(cand_seed, device):
                    net = space.build(g, in_channels, num_classes).to(device)
                # A one-candidate FuseRound is plain training: softmax of a single α is 1, so c̄ = c.
                solo = FuseRound([net], lr=lr, alpha_lr=0.0, weight_decay=weight_decay)
                data_gen = torch.Generator().manual_seed(cand_seed)
                pos = runner.new_position()
                if inflight is not None:
                    runner.load_round_state(solo, data_gen, inflight)
                    pos = inflight["position"]
                inflight = None
                run.round_base(i - 1)
                extra = {"genotype": g.to_dict(), "seed": cand_seed, "position": pos}  # pos changes in place
                losses = run.weight_steps(
                    solo, x_tr, y_tr, data_gen, pos, extra, epochs=epochs_per_candidate, batch_size=batch_size
                )
                per_epoch = len(losses) // epochs_per_candidate
                last = losses[-per_epoch:]  # the last epoch's losses
                val_acc = accuracy(logits_of(net, x_val, 512, device), y_val)
                run.history.append(
                    {
                        "round": i,
                        "genotype": g.to_dict(),
                        "val_accuracy": val_acc,
                        "train_loss": sum(last) / len(last),
                        "candidate_epochs": epochs_per_candidate,
                        "weight_steps": len(losses),
                        "elapsed_s": run.meter.snapshot()["search"]["wall_s"],
                    }
                )
                run.save_round(i)
                bar.update(1)
                bar.set_description(
                    f"candidate {i + 1}: best validation accuracy so far "
                    f"{max(h['val_accuracy'] for h in run.history):.3f}"
                )

        # Best validation accuracy; ties go to the earlier candidate.
        history = run.history
        best_i = max(range(len(history)), key=lambda k: (history[k]["val_accuracy"], -k))
        best = Genotype.from_dict(history[best_i]["genotype"])
        run.train_winner(space, best, data, final_epochs=final_epochs, batch_size=batch_size, lr=lr)
    return run.finish(
        method="random",
        alpha_steps=0,
        candidates_trained=len(history),
    )
