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
from ._common import (
    SearchFiles,
    accuracy,
    check_positive_ints,
    data_fingerprint,
    logits_of,
    search_inputs,
    show_progress,
)
from .cost import CostMeter
from .determinism import reproducible
from .fuse import (
    Checkpointer,
    FuseResult,
    FuseRound,
    _distinct_candidates,
    _final,
    _new_seed,
    _save_winner,
    load_round_state,
    new_position,
    resume_run,
    round_state,
    run_state,
    search_cost,
    train_epochs,
)
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
) -> FuseResult:
    """Random search with ``budget`` candidate-epochs: ⌊budget / epochs_per_candidate⌋ distinct architectures.

    Seeding, determinism, checkpoints (every candidate and every ``checkpoint_every`` weight steps) and ``cost`` are
    as in :func:`fisherx.nas.fuse`. Returns a :class:`FuseResult` with ``method == "random"``; ``history`` has one
    entry per candidate (its genotype, validation accuracy, final training loss).
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
    config = {
        "method": "random",
        "space": space.to_dict(),
        "data": data_fingerprint(data),
        "budget": budget,
        "epochs_per_candidate": epochs_per_candidate,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "final_epochs": final_epochs,
        "seed": seed,
        "deterministic": deterministic,
    }
    files = SearchFiles(out_dir, "random", config)
    done = files.load_result()
    if done is not None:
        return FuseResult.from_dict(done)
    ckpt = Checkpointer(files, checkpoint_every)

    gen = torch.Generator().manual_seed(seed)
    history, start, inflight, nondet = [], 0, None, []
    state = files.load_checkpoint()
    meter = CostMeter(device, state["cost"] if state is not None else None)

    with reproducible(seed, device, deterministic=deterministic, found=nondet):
        if state is not None:
            history, start, inflight = resume_run(state, device, gen, nondet, f"random search in {files.dir}")
        seen = {Genotype.from_dict(h["genotype"]).key() for h in history}
        with Progress(
            total=n, initial=start, desc="random search", unit="arch", enabled=show_progress(progress)
        ) as bar:
            x_tr, y_tr = x_tr.to(device), y_tr.to(device)
            with meter.stage("search"):
                for i in range(start, n):
                    if inflight is not None:  # resume inside candidate i
                        g, cand_seed = Genotype.from_dict(inflight["genotype"]), inflight["seed"]
                    else:
                        found = _distinct_candidates(space, gen, 1, seen)
                        if not found:
                            break  # the space is exhausted: every architecture has been tried
                        g = found[0]
                        cand_seed = _new_seed(gen)
                    seen.add(g.key())
                    with seeded(cand_seed, device):
                        net = space.build(g, in_channels, num_classes).to(device)
                    # A one-candidate FuseRound is plain training: softmax of a single α is 1, so c̄ = c.
                    solo = FuseRound([net], lr=lr, alpha_lr=0.0, weight_decay=weight_decay)
                    data_gen = torch.Generator().manual_seed(cand_seed)
                    pos = new_position()
                    if inflight is not None:
                        load_round_state(solo, data_gen, inflight)
                        pos = inflight["position"]
                    inflight = None
                    ckpt.base = lambda: {
                        "round": i - 1,
                        "generator": gen.get_state(),
                        "history": history,
                        **run_state(device, meter, nondet),
                    }
                    here = lambda: round_state(
                        solo,
                        data_gen,
                        {  # noqa: E731 (read at checkpoint time)
                            "genotype": g.to_dict(),
                            "seed": cand_seed,
                            "position": pos,
                        },
                    )
                    losses = train_epochs(
                        solo,
                        x_tr,
                        y_tr,
                        epochs=epochs_per_candidate,
                        batch_size=batch_size,
                        gen=data_gen,
                        device=device,
                        pos=pos,
                        on_step=lambda: ckpt.step(here),
                    )
                    per_epoch = len(losses) // epochs_per_candidate
                    last = losses[-per_epoch:]  # the last epoch's losses
                    val_acc = accuracy(logits_of(net, x_val, 512, device), y_val)
                    history.append(
                        {
                            "round": i,
                            "genotype": g.to_dict(),
                            "val_accuracy": val_acc,
                            "train_loss": sum(last) / len(last),
                            "candidate_epochs": epochs_per_candidate,
                            "weight_steps": len(losses),
                            "elapsed_s": meter.snapshot()["search"]["wall_s"],
                        }
                    )
                    files.save_round(
                        {
                            "round": i,
                            "generator": gen.get_state(),
                            "history": history,
                            **run_state(device, meter, nondet),
                        },
                        history,
                    )
                    bar.update(1)
                    bar.set_description(
                        f"candidate {i + 1}: best validation accuracy so far "
                        f"{max(h['val_accuracy'] for h in history):.3f}"
                    )

        # Best validation accuracy; ties go to the earlier candidate.
        best_i = max(range(len(history)), key=lambda k: (history[k]["val_accuracy"], -k))
        best = Genotype.from_dict(history[best_i]["genotype"])
        with meter.stage("final_training"):
            final, net = _final(files, space, best, data, final_epochs, batch_size, lr, seed, device)
    cost = search_cost(meter, device, history, nondet, alpha_steps=0, candidates_trained=len(history))
    result = FuseResult(
        best, final["test_accuracy"], final["val_accuracy"], final["params"], cost, history, space, "random", net
    )
    _save_winner(files, net, result)
    return result
