"""task_distances under torchrun: 2 CPU ranks on gloo split the units of work and assemble the same matrices."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

import fisherx
from fisherx.tasks import preset

from distributed_util import torchrun

ARGS = dict(archs=["mlp"], seeds=[0, 1], epochs=2, fisher_samples=64, epsilon=None, progress=False)

SCRIPT = textwrap.dedent("""
    import json, sys
    import fisherx
    from fisherx import distributed as fxd
    from fisherx.tasks import preset
    assert fxd.init_from_env()
    r = fisherx.task_distances(preset("digits")[:3], cache_dir=sys.argv[1], **eval(sys.argv[2]))
    rank, _ = fxd.rank_and_world()
    with open(f"{sys.argv[3]}/rank{rank}.json", "w") as f:
        json.dump({"stats": r.stats, "distances": r.distances["mlp"].tolist()}, f)
""")


def test_two_ranks_split_the_units_and_agree(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = torchrun([str(script), str(tmp_path / "cache"), repr(ARGS), str(tmp_path)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 2 seeds × 3 tasks = 6 networks and 2 × 3 × 3 = 18 Fishers, each computed by exactly one rank.
    for kind, total in (("network", 6), ("fisher", 18)):
        stores = [r["stats"].get(f"{kind}.store", 0) for r in ranks]
        assert sum(stores) == total and min(stores) > 0, (kind, stores)
    np.testing.assert_array_equal(ranks[0]["distances"], ranks[1]["distances"])
    # A single process reading the same cache recomputes nothing and finds the same matrices.
    again = fisherx.task_distances(preset("digits")[:3], cache_dir=tmp_path / "cache", **ARGS)
    assert again.stats == {"network.hit": 6, "fisher.hit": 18}
    np.testing.assert_array_equal(again.distances["mlp"], np.asarray(ranks[0]["distances"]))


def test_distributed_needs_a_shared_cache(monkeypatch):
    from fisherx import experiment

    monkeypatch.setattr(experiment._fxd, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match="under torch.distributed, task_distances needs cache_dir"):
        fisherx.task_distances(preset("digits")[:2], cache_dir=None, **ARGS)
