"""Random search, the baseline TA-NAS must beat (Li & Talwalkar 2019; the papers' tables).

Draw distinct architectures from the same space, train each on its own for ``epochs_per_candidate`` epochs (Adam,
same learning rate and batch size as FUSE's weight steps), keep the one with the best *validation* accuracy, and
retrain it from scratch exactly as FUSE retrains its winner. The budget is counted in the unit FUSE reports,
candidate-epochs (networks × passes over the training data): with ``budget = fuse_result.cost["candidate_epochs"]``
both methods spend the same number of training passes, random search on fewer but fully trained networks.

Resumable like FUSE: a checkpoint after every candidate (generator state, history), the same JSON-lines log.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ..train import seeded
from ._common import (SearchFiles, accuracy, batches, data_fingerprint, device_name, logits_of, pick_device,
                      resolve_data, shape_of, show_progress, split)
from .fuse import FuseResult, FuseRound, _distinct_candidates, _final, _new_seed, _save_winner
from .space import SearchSpace


def random_search(space: SearchSpace, task: Any, *, budget: int, epochs_per_candidate: int = 5,
                  batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.0, final_epochs: int = 20,
                  seed: int = 0, device=None, out_dir=None, progress: bool | None = None,
                  data_dir=None) -> FuseResult:
    """Random search with ``budget`` candidate-epochs: ⌊budget / epochs_per_candidate⌋ distinct architectures.

    Returns a :class:`FuseResult` with ``method == "random"``; ``history`` has one entry per candidate (its
    genotype, validation accuracy, final training loss).
    """
    for name, v in (("budget", budget), ("epochs_per_candidate", epochs_per_candidate),
                    ("batch_size", batch_size), ("final_epochs", final_epochs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    n = budget // epochs_per_candidate
    if n < 1:
        raise ValueError(f"a budget of {budget} candidate-epochs trains no candidate at {epochs_per_candidate} "
                         f"epochs each; raise the budget or lower epochs_per_candidate")
    data = resolve_data(task, data_dir)
    device = pick_device(device)
    x_tr, y_tr = split(data, "train")
    x_val, y_val = split(data, "val")
    in_channels, num_classes = shape_of(data)
    config = {"method": "random", "space": space.to_dict(), "data": data_fingerprint(data), "budget": budget,
              "epochs_per_candidate": epochs_per_candidate, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "final_epochs": final_epochs, "seed": seed}
    files = SearchFiles(out_dir, "random", config)
    done = files.load_result()
    if done is not None:
        return FuseResult.from_dict(done)

    gen = torch.Generator().manual_seed(seed)
    history, start, elapsed, seen = [], 0, 0.0, set()
    state = files.load_checkpoint()
    if state is not None:
        gen.set_state(state["generator"])
        history, start, elapsed = list(state["history"]), int(state["round"]) + 1, float(state["elapsed"])
    from .genotype import Genotype

    seen = {Genotype.from_dict(h["genotype"]).key() for h in history}

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=start, desc="random search", unit="arch", disable=not show_progress(progress))
    x_tr, y_tr = x_tr.to(device), y_tr.to(device)
    for i in range(start, n):
        t0 = time.perf_counter()
        found = _distinct_candidates(space, gen, 1, seen)
        if not found:
            break  # the space is exhausted: every architecture has been tried
        g = found[0]
        seen.add(g.key())
        cand_seed = _new_seed(gen)
        with seeded(cand_seed, device):
            net = space.build(g, in_channels, num_classes).to(device)
        # A one-candidate FuseRound is plain training: softmax of a single α is 1, so c̄ = c.
        solo = FuseRound([net], lr=lr, alpha_lr=0.0, weight_decay=weight_decay)
        data_gen = torch.Generator().manual_seed(cand_seed)
        losses = []
        for _ in range(epochs_per_candidate):
            losses = [solo.weight_step(x_tr[idx.to(device)], y_tr[idx.to(device)])
                      for idx in batches(len(y_tr), batch_size, data_gen)]
        val_acc = accuracy(logits_of(net, x_val, 512, device), y_val)
        elapsed += time.perf_counter() - t0
        history.append({"round": i, "genotype": g.to_dict(), "val_accuracy": val_acc,
                        "train_loss": sum(losses) / len(losses), "candidate_epochs": epochs_per_candidate,
                        "weight_steps": len(losses) * epochs_per_candidate, "elapsed_s": elapsed})
        files.save_round({"round": i, "generator": gen.get_state(), "history": history, "elapsed": elapsed},
                         history)
        bar.update(1)
        bar.set_postfix(best_val=f"{max(h['val_accuracy'] for h in history):.3f}")
    bar.close()

    # Best validation accuracy; ties go to the earlier candidate.
    best_i = max(range(len(history)), key=lambda k: (history[k]["val_accuracy"], -k))
    best = Genotype.from_dict(history[best_i]["genotype"])
    final, net = _final(space, best, data, final_epochs, batch_size, lr, seed, device)
    cost = {"search_s": elapsed, "final_train_s": final["train_s"], "device": device_name(device),
            "rounds": len(history), "candidate_epochs": sum(h["candidate_epochs"] for h in history),
            "weight_steps": sum(h["weight_steps"] for h in history), "alpha_steps": 0,
            "candidates_trained": len(history)}
    result = FuseResult(best, final["test_accuracy"], final["val_accuracy"], final["params"], cost, history, space,
                        "random", net)
    _save_winner(files, net, result)
    return result
