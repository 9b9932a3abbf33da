"""Retrain and evaluate an exported architecture from its JSON file alone (``fisherx retrain``).

The genotype file written by a search (``fuse_genotype.json``, a dictionary's ``genotype.json``, or
``Genotype.save(path, space=...)``) records the cells and the search space's skeleton (width, depth, stem), so the
network can be rebuilt exactly; a file without a space needs the skeleton given explicitly. Training is the one a
search gives its winner (:func:`fisherx.nas._common.final_training`: Adam, best-validation epoch kept, test accuracy
recorded once), under one seed, with per-epoch checkpoints in ``out_dir`` and the cost of the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, save_tree
from ._common import device_name, final_training, pick_device, resolve_data
from .cost import CostMeter
from .determinism import reproducible
from .genotype import Genotype
from .space import SearchSpace

RESULT_FORMAT = "fisherx.retrain_result"
RESULT_VERSION = 1


def retrain(
    genotype: Genotype | str | Path,
    task: Any,
    *,
    epochs: int,
    space: SearchSpace | None = None,
    width: int | None = None,
    depth: int | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device=None,
    out_dir=None,
    data_dir=None,
    deterministic: bool = True,
) -> dict:
    """Train ``genotype`` (a :class:`Genotype` or the path of its JSON file) from scratch on ``task`` for ``epochs``
    epochs and evaluate it. The skeleton comes from ``space``, else the space recorded in the file; ``width`` /
    ``depth`` override it (and are needed when there is neither). Returns the result dict (also written to
    ``out_dir/retrain_result.json``, with the weights in ``out_dir/retrain_weights.fx``): test and validation
    accuracy, parameters, the genotype with its space, the settings and the cost (:mod:`fisherx.nas.cost`)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    source = None
    if not isinstance(genotype, Genotype):
        source = str(genotype)
        genotype, recorded = Genotype.load_with_space(genotype)
        space = space or recorded
    if space is None and (width is None or depth is None):
        raise ValueError(
            f"{source or 'the genotype'} records no search space, so the network's skeleton is unknown: "
            "give the width and the depth (--width, --depth)"
        )
    base = space or SearchSpace.from_genotypes(genotype, width=width, depth=depth, name="retrain")
    space = SearchSpace(
        base.ops,
        base.nodes,
        width if width is not None else base.width,
        depth if depth is not None else base.depth,
        base.stem_multiplier,
        name=base.name,
    )
    data = resolve_data(task, data_dir)
    device = pick_device(device)
    out = Path(out_dir) if out_dir is not None else None
    meter = CostMeter(device)
    recipe = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}  # trained with, and recorded
    checkpoint = out / "retrain_checkpoint.fx" if out is not None else None
    with reproducible(seed, device, deterministic=deterministic) as nondet, meter.stage("final_training"):
        report, net = final_training(space, genotype, data, device=device, checkpoint=checkpoint, **recipe)
    t = getattr(data, "task", None) or task
    stages = meter.to_dict()["stages"]
    result = {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "source": source,
        "genotype": genotype.to_dict(space=space),
        "task": t.config() if hasattr(t, "config") else {"name": getattr(t, "name", str(t))},
        "test_accuracy": report["test_accuracy"],
        "val_accuracy": report["val_accuracy"],
        "params": report["params"],
        **recipe,
        "cost": {
            "stages": stages,
            "device": device_name(device),
            "candidates_trained": 1,
            "peak_rss_mb": stages["final_training"]["peak_rss_mb"],
            "peak_cuda_mb": stages["final_training"]["peak_cuda_mb"],
            "nondeterministic_ops": list(nondet),
        },
    }
    if out is not None:
        save_tree(
            out / "retrain_weights.fx",
            {k: v.detach().cpu() for k, v in net.state_dict().items()},
            meta={"genotype": result["genotype"]},
        )
        atomic_write_text(out / "retrain_result.json", json.dumps(result, indent=1, sort_keys=True) + "\n")
        (out / "retrain_checkpoint.fx").unlink(missing_ok=True)  # the result is stored
    return result
