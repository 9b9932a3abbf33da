"""An affinity run's files: affinity.json (matrices, agreement, comparison, cost), table.txt and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import atomic_write_text
from .agreement import agreement, agreement_table, cost_table, plot_cost, plot_matrices
from .choose import compare_sources, comparison_table


def _matrix(names, m: np.ndarray, digits: int = 3) -> list:
    w = max(8, max(len(n) for n in names))
    lines = [f"{'source':<{w}}  " + "  ".join(f"{n:>{w}}" for n in names)]
    lines += [f"{n:<{w}}  " + "  ".join(f"{v:>{w}.{digits}f}" for v in row) for n, row in zip(names, m, strict=True)]
    return lines


def _plain(obj):
    # JSON has no NaN (a correlation of a vector without spread): write null instead.
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def report_text(result, kind: str = "ahp") -> str:
    """The run as text: mean FTD, affinity and gain matrices (rows = source, columns = target), the agreement per
    target, the fine-tuning comparison and the cost table."""
    names, s = result.task_names, len(result.seeds)
    parts = [
        f"FTD d[a, b], mean over {s} seed(s) (rows = source a, columns = target b; lower = closer)",
        *_matrix(names, result.ftd.mean(0)),
        "",
        f"transfer affinity ({kind}), mean over {s} seed(s) (higher = the better source)",
        *_matrix(names, result.affinity(kind).mean(0)),
        "",
        "gain over scratch 1 - L[a, b] / L_scratch[b], mean over seeds",
        *_matrix(names, result.gain.mean(0)),
        "",
        f"agreement of -FTD with the {kind} affinity per target (sources a != b)",
        agreement_table(agreement(result, kind)),
        "",
        "fine-tuning for each target",
        comparison_table(compare_sources(result, kind)),
        "",
        "compute",
        cost_table(result),
    ]
    return "\n".join(parts) + "\n"


def write_report(result, out, kind: str = "ahp") -> dict:
    """Write ``out/affinity.json``, ``out/table.txt``, ``out/matrices.png`` and ``out/cost.png``; returns the
    paths by name. affinity.json holds every per-seed matrix, the agreement and comparison for both affinities,
    and the cost (an undefined correlation is null)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = result.to_dict()
    doc["agreement"] = {k: agreement(result, k) for k in ("ahp", "gain")}
    doc["comparison"] = {k: compare_sources(result, k) for k in ("ahp", "gain")}
    text = json.dumps(_plain(doc), indent=1, allow_nan=False) + "\n"
    paths = {
        "json": atomic_write_text(out / "affinity.json", text),
        "table": atomic_write_text(out / "table.txt", report_text(result, kind)),
    }
    try:
        plot_matrices(result, out / "matrices.png", kind)
        plot_cost(result, out / "cost.png")
        paths["matrices"], paths["cost"] = out / "matrices.png", out / "cost.png"
    except ImportError:  # matplotlib is the optional `plot` extra: the numbers are written all the same
        pass
    return paths
