"""The application: which of my trained networks should I fine-tune for a new task? Ask the FTD.

:func:`choose_source` takes the Fisher of every candidate network on the target's test data, F_ab, and of an
ε-network of the target itself, F_bb, and picks argmin_a FTD(F_ab, F_bb): no candidate is fine-tuned to choose.
:func:`fine_tune` then trains the chosen copy on the target. :func:`compare_sources` reads an affinity run and
sets fine-tuning from the FTD-chosen source beside fine-tuning from the affinity-best source and training from
scratch, on the same budget (the brute force fine-tuned every source, so all three are already measured there).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..distance import distance_column
from ..experiments.trust import LEVEL
from ..models.training import TrainResult, default_device, train
from .affinity import as_fisher, fisher_value, fresh_copy
from .agreement import seed_mean_interval


@dataclass
class SourceChoice:
    """The FTD-closest candidate: its ``name`` and ``model``, every candidate's FTD to the target (``distances``),
    and the target's own ε-network behind F_bb (``target_model``)."""

    name: str
    model: nn.Module
    distances: dict
    target_model: nn.Module


def _data(target):
    return target if hasattr(target, "test") else target.load()


def choose_source(
    target,
    candidates: Mapping[str, nn.Module],
    *,
    target_model: nn.Module | None = None,
    loss="mse",
    arch: str = "autoencoder",
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    fisher_samples: int | None = None,
    device=None,
) -> SourceChoice:
    """Pick the candidate network to fine-tune for ``target`` (a task, or its loaded data) by FTD.

    d_a = FTD(F_ab, F_bb) = (1/√2)‖√F̂_ab − √F̂_bb‖ with F_ab the Fisher of candidate a on b's test data under the
    per-sample ``loss`` and F_bb that of ``target_model`` (when None, a fresh ``arch`` ε-network is trained on the
    target for ``epochs`` epochs with ``seed``); the choice is argmin_a d_a. Candidates must share the target
    network's architecture (the Fishers are compared entry by entry).
    """
    if not candidates:
        raise ValueError("choose_source: no candidate networks to choose from")
    data = _data(target)
    device = default_device(device)
    if target_model is None:  # trained from scratch: every parameter of a fresh network, as fine_tune trains
        fresh = fresh_copy(arch, data, seed)
        target_model = fine_tune(
            fresh, data, epochs=epochs, seed=seed, loss=loss, batch_size=batch_size, lr=lr, device=device
        ).model
    names = list(candidates)
    values = [
        fisher_value(m.to(device), data, loss, fisher_samples, device)
        for m in [*candidates.values(), target_model.to(device)]
    ]
    fishers = [as_fisher(v) for v in values]
    d = distance_column(fishers[:-1], fishers[-1], names=names, target_name=getattr(data.task, "name", "target"))
    best = int(torch.argmin(d))
    return SourceChoice(names[best], candidates[names[best]], dict(zip(names, d.tolist(), strict=True)), target_model)


def fine_tune(
    model: nn.Module,
    target,
    *,
    epochs: int,
    seed: int = 0,
    loss="mse",
    batch_size: int = 64,
    lr: float = 1e-3,
    device=None,
    progress: bool = False,
) -> TrainResult:
    """Fine-tune a copy of ``model`` on ``target`` (a task, or its loaded data): every parameter trained with
    Adam(lr) on the per-sample ``loss`` for ``epochs`` epochs; ``model`` itself is left untouched."""
    return train(
        copy.deepcopy(model),
        _data(target),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
        epsilon=None,
        loss=loss,
    )


def _summary(values: list, level: float) -> dict:
    return {"per_seed": values, "mean": float(np.mean(values)), "interval": seed_mean_interval(values, level)}


def compare_sources(result, kind: str = "ahp", level: float = LEVEL) -> dict:
    """Per target b: the test loss after fine-tuning from the FTD-chosen source (argmin_{a≠b} d[a, b]), from the
    affinity-best source (argmax_{a≠b} of the ``kind`` affinity) and after training from scratch, all on the run's
    budget; per seed, mean and t interval over seeds. The affinity-best is chosen by looking at the very test
    losses it is scored on (an oracle), so it bounds what any chooser could reach from these sources."""
    aff = result.affinity(kind)
    out = {}
    for b, target in enumerate(result.task_names):
        others = [a for a in range(len(result.task_names)) if a != b]
        ftd_loss, aff_loss = [], []
        for s in range(len(result.seeds)):
            ftd_loss.append(float(result.fine_tuned_loss[s, others[int(np.argmin(result.ftd[s, others, b]))], b]))
            aff_loss.append(float(result.fine_tuned_loss[s, others[int(np.argmax(aff[s, others, b]))], b]))
        out[target] = {
            "ftd_chosen": _summary(ftd_loss, level),
            "affinity_best": _summary(aff_loss, level),
            "scratch": _summary([float(v) for v in result.scratch_loss[:, b]], level),
        }
    return out


def comparison_table(comparison: dict, level: float = LEVEL) -> str:
    """The comparison of :func:`compare_sources` as text (test loss, mean [interval over seeds])."""

    def cell(stat):
        iv = stat["interval"]
        return f"{stat['mean']:.4f}" + (f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else "")

    rows = [("target", "from FTD-chosen", "from affinity-best", "from scratch")]
    rows += [(t, cell(c["ftd_chosen"]), cell(c["affinity_best"]), cell(c["scratch"])) for t, c in comparison.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    note = f"(test loss after the same fine-tuning budget; mean [{level:.0%} t interval over seeds])"
    return "\n".join(lines + [note])
